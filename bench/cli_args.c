/* SPDX-License-Identifier: MIT */
/* getopt_long-style parsing for the `sona` tool (see cli_args.h). */
#include "cli_args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cli_parser_init(cli_parser *p, const char *prog, int argc, char **argv)
{
    memset(p, 0, sizeof *p);
    p->prog = prog;
    p->argc = argc;
    p->argv = argv;
    p->next = 1;
}

static int unknown(cli_parser *p)
{
    fprintf(stderr, "%s: unknown option '%s'\n", p->prog, p->option);
    return CLI_ERROR;
}

/* The option's value: the text after '=' (or after a short option's letter) when there is one,
 * else the next argument. */
static int take_value(cli_parser *p, const cli_option *o, const char *attached)
{
    if (attached)
        p->value = attached;
    else if (p->next < p->argc)
        p->value = p->argv[p->next++];
    else
        p->value = NULL;
    if (!p->value || !p->value[0]) {
        fprintf(stderr, "%s: %s needs a value\n", p->prog, p->option);
        return CLI_ERROR;
    }
    return o->id;
}

static int long_option(cli_parser *p, const cli_option *opts, const char *arg)
{
    const char *eq = strchr(arg, '=');
    const size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    snprintf(p->option_buf, sizeof p->option_buf, "%.*s", (int)len, arg);
    p->option = p->option_buf;
    const char *name = arg + 2;
    const size_t name_len = len - 2;
    if (!name_len) /* "--=x": no name to show, so the whole argument */
        p->option = arg;
    for (const cli_option *o = opts; o->name || o->short_name; o++) {
        if (!o->name || strlen(o->name) != name_len || strncmp(o->name, name, name_len))
            continue;
        if (o->takes_value)
            return take_value(p, o, eq ? eq + 1 : NULL);
        if (eq) {
            fprintf(stderr, "%s: %s takes no value\n", p->prog, p->option);
            return CLI_ERROR;
        }
        return o->id;
    }
    return unknown(p);
}

static int short_option(cli_parser *p, const cli_option *opts, const char *arg)
{
    for (const cli_option *o = opts; o->name || o->short_name; o++) {
        if (o->short_name != arg[1])
            continue;
        snprintf(p->option_buf, sizeof p->option_buf, "-%c", arg[1]);
        p->option = p->option_buf;
        if (o->takes_value)
            return take_value(p, o, arg[2] ? arg + 2 : NULL);
        if (arg[2])
            break; /* no bundling of flags: "-hx" is not an option */
        return o->id;
    }
    p->option = arg;
    return unknown(p);
}

int cli_next(cli_parser *p, const cli_option *opts)
{
    p->value = NULL;
    p->option = NULL;
    if (p->next >= p->argc)
        return CLI_END;
    const char *arg = p->argv[p->next++];
    if (p->options_ended || arg[0] != '-' || !arg[1]) { /* "-" alone is an operand (stdin) */
        p->value = arg;
        return CLI_OPERAND;
    }
    if (!strcmp(arg, "--")) {
        p->options_ended = 1;
        return cli_next(p, opts);
    }
    return arg[1] == '-' ? long_option(p, opts, arg) : short_option(p, opts, arg);
}

int cli_unexpected(const cli_parser *p, const char *arg)
{
    fprintf(stderr, "%s: unexpected argument '%s'\n", p->prog, arg);
    return CLI_ERROR;
}

int cli_parse_u64(const char *s, unsigned long long *out)
{
    if (!s || s[0] < '0' || s[0] > '9')
        return -1;
    char *end;
    errno = 0;
    const unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_finite(const char *s, double *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    const double v = strtod(s, &end);
    /* strtod takes "nan", "inf" and overflows to infinity: none is a usable setting. */
    if (*end || !isfinite(v) || (errno == ERANGE && v != 0))
        return -1;
    *out = v;
    return 0;
}
