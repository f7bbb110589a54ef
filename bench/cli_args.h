/* SPDX-License-Identifier: MIT */
/* Command-line option parsing for the `sona` tool and its subcommands, in the style of
 * getopt_long: "--name=value" and "--name value" both work for an option that takes a value,
 * "-x value" and "-xvalue" for a short one, "--" ends the options, and operands may come before,
 * between or after options. Unlike getopt_long, long names are never abbreviated (so a new
 * option cannot change what an old command line means) and nothing is reordered.
 *
 * Errors are printed on stderr as "<prog>: unknown option '--grup'" or "<prog>: --group needs
 * a value"; the caller exits with status 2. It lives in bench/ because the `sona` tool links the
 * bench library and `sona bench` parses its options with it. */
#ifndef SONA_BENCH_CLI_ARGS_H
#define SONA_BENCH_CLI_ARGS_H

typedef struct cli_option {
    const char *name; /* long name without "--", or NULL for a short-only option */
    char short_name;  /* 'h' for -h, or 0 */
    int takes_value;  /* 1: needs a (non-empty) value; 0: a flag, refuses "--flag=value" */
    int id;           /* what cli_next() returns for it; must be >= 0 */
} cli_option;

typedef struct cli_parser {
    const char *prog;       /* for messages, e.g. "sona bench" */
    int argc;
    char **argv;            /* argv[0] is the command itself and is skipped */
    int next;               /* the next element of argv to read */
    int options_ended;      /* after "--" everything is an operand */
    const char *value;      /* the option's value, or the operand */
    const char *option;     /* the option as written, less any "=value" (for messages) */
    char option_buf[256];
} cli_parser;

enum {
    CLI_END = -1,     /* no more arguments */
    CLI_ERROR = -2,   /* a bad argument; the message is already on stderr */
    CLI_OPERAND = -3  /* a non-option argument, in p->value */
};

void cli_parser_init(cli_parser *p, const char *prog, int argc, char **argv);

/* The next option's id (its value, if any, in p->value), CLI_OPERAND, CLI_END or CLI_ERROR.
 * opts ends with an entry whose name is NULL and short_name is 0. */
int cli_next(cli_parser *p, const cli_option *opts);

/* Prints "<prog>: unexpected argument 'x'" on stderr; returns CLI_ERROR. */
int cli_unexpected(const cli_parser *p, const char *arg);

/* Parses a whole unsigned decimal number (no sign, no trailing text) into *out; 0 on success. */
int cli_parse_u64(const char *s, unsigned long long *out);
/* A finite decimal number (no nan, no inf, no overflow) into *out: 0, or -1 when s is not one. */
int cli_parse_finite(const char *s, double *out);

#endif
