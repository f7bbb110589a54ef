/* SPDX-License-Identifier: MIT */
/* The files sona_save and sona_export_peft write and sona_load reads, against hostile or
 * unlucky surroundings: a file name as long as the filesystem allows saves and loads; the
 * temporaries of a save (or export) killed midway are removed by the next one to the same
 * target, and a save killed with SIGKILL leaves nothing behind after it; the state readers
 * refuse what is not a regular file (a FIFO would block them, /dev/zero fill the memory). */
#define _GNU_SOURCE /* O_TMPFILE in engine/files.h users, mkfifo */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/files.h"
#include "support/files.h"
#include <sona.h>

#define H 16

static sona_engine *make(void)
{
    sona_engine_config c;
    sona_engine_config_default(&c, SONA_PRESET_DEFAULT, H);
    c.background_thread = 0;
    c.base_layers = 2;
    sona_engine *e = NULL;
    cr_assert_eq(sona_engine_create(&c, &e), SONA_OK, "%s", sona_last_error());
    int32_t t;
    cr_assert_eq(sona_tenant_create(e, &t), SONA_OK);
    return e;
}

static void make_dir(char *dir)
{
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

/* How many entries of dir start with prefix. */
static int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s", dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* A name of 250 characters (the limit is 255 bytes): the temporary name used to be the name
 * plus ".tmp.XXXXXX", too long; now it is short whatever the target's. Saved, loaded, and
 * saved again over the first file. */
Test(state_files, a_250_character_name_saves_and_loads)
{
    char dir[] = "/tmp/sona-files-XXXXXX";
    make_dir(dir);
    char name[251], path[600];
    memset(name, 'n', 250);
    name[250] = '\0';
    snprintf(path, sizeof path, "%s/%s", dir, name);
    sona_engine *e = make();
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_save(e, path), SONA_OK, "replacing: %s", sona_engine_last_error(e));
    sona_engine *f = make();
    cr_assert_eq(sona_load(f, path), SONA_OK, "%s", sona_engine_last_error(f));
    sona_engine_config c;
    cr_assert_eq(sona_state_config(path, &c), SONA_OK, "%s", sona_last_error());
    cr_expect_eq(c.hidden, H);
    cr_expect_eq(count_prefixed(dir, "."), 2, "temporaries left beside the state"); /* . and .. */
    /* The export's directory too: its temporary directory was the name plus ".new-XXXXXX". */
    char out[600];
    memset(name, 'x', 250);
    snprintf(out, sizeof out, "%s/%s", dir, name);
    cr_assert_eq(sona_export_peft(e, out, NULL), SONA_OK, "%s", sona_engine_last_error(e));
    cr_assert_eq(sona_export_peft(e, out, NULL), SONA_OK, "replacing: %s", sona_engine_last_error(e));
    cr_expect_eq(count_prefixed(dir, "."), 2, "temporaries left beside the export");
    sona_engine_destroy(f);
    sona_engine_destroy(e);
    remove_tree(dir);
}

/* What a save, or an export, killed after creating its temporary leaves: made in a child
 * process (which then exits, as a killed one would) by the same naming the writers use. */
static void leave_temporary_of(const char *target, int as_dir)
{
    fflush(stdout);
    const pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char *tmp = eng_temp_name(target);
        if (!tmp)
            _exit(1);
        if (as_dir) {
            if (!mkdtemp(tmp))
                _exit(1);
            char file[700];
            snprintf(file, sizeof file, "%s/adapter_config.json", tmp);
            FILE *f = fopen(file, "w");
            if (!f || fputs("{}", f) < 0 || fclose(f) != 0)
                _exit(1);
        } else {
            const int fd = mkstemp(tmp);
            if (fd < 0 || write(fd, "half a state", 12) != 12)
                _exit(1);
        }
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child could not leave its temporary");
}

/* A killed save's temporary is removed by the next save of the same target; a temporary of a
 * writer still running (this process) and one of another target are left alone. */
Test(state_files, the_next_save_removes_a_killed_saves_temporary)
{
    char dir[] = "/tmp/sona-files-XXXXXX";
    make_dir(dir);
    char path[300], other[300];
    snprintf(path, sizeof path, "%s/state.sona", dir);
    snprintf(other, sizeof other, "%s/other.sona", dir);
    leave_temporary_of(path, 0);
    leave_temporary_of(other, 0);
    char *mine = eng_temp_name(path); /* a live writer's: this process */
    cr_assert_not_null(mine);
    const int fd = mkstemp(mine);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(count_prefixed(dir, ".sona-"), 3);
    struct timespec pause = {0, 20 * 1000 * 1000}; /* the temporaries are older than the save */
    nanosleep(&pause, NULL);
    sona_engine *e = make();
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    cr_expect_eq(count_prefixed(dir, ".sona-"), 2, "the killed save's temporary is still there");
    cr_expect_eq(access(mine, F_OK), 0, "a running writer's temporary was removed");
    cr_assert_eq(sona_save(e, other), SONA_OK, "%s", sona_engine_last_error(e));
    cr_expect_eq(count_prefixed(dir, ".sona-"), 1, "the other target's temporary is still there");

    /* An export killed after filling its directory. */
    char out[300];
    snprintf(out, sizeof out, "%s/adapter", dir);
    leave_temporary_of(out, 1);
    cr_assert_eq(count_prefixed(dir, ".sona-"), 2);
    nanosleep(&pause, NULL);
    cr_assert_eq(sona_export_peft(e, out, NULL), SONA_OK, "%s", sona_engine_last_error(e));
    cr_expect_eq(count_prefixed(dir, ".sona-"), 1, "the killed export's directory is still there");
    unlink(mine);
    free(mine);
    sona_engine_destroy(e);
    remove_tree(dir);
}

/* A child saves over and over and is killed with SIGKILL in the middle; one more save leaves
 * the target loadable and no temporary beside it. */
Test(state_files, a_save_killed_by_sigkill_leaves_nothing_after_the_next)
{
    char dir[] = "/tmp/sona-files-XXXXXX";
    make_dir(dir);
    char path[300];
    snprintf(path, sizeof path, "%s/state.sona", dir);
    for (int round = 0; round < 5; round++) {
        fflush(stdout);
        const pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            sona_engine *e = make();
            for (;;)
                if (sona_save(e, path) != SONA_OK)
                    _exit(1);
        }
        struct timespec wait = {0, (30 + 17 * round) * 1000 * 1000};
        nanosleep(&wait, NULL);
        kill(pid, SIGKILL);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status), "the saving child ended by itself (status %d)", status);
    }
    sona_engine *e = make();
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    cr_expect_eq(count_prefixed(dir, ".sona-"), 0, "a killed save's temporary is left");
    cr_expect_eq(sona_load(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine_destroy(e);
    remove_tree(dir);
}

/* A FIFO (nobody writing: a blocking open would hang), /dev/zero (endless) and a directory are
 * refused at once by every state reader, with SONA_E_IO and a message. */
Test(state_files, readers_refuse_what_is_not_a_regular_file, .timeout = 60)
{
    char dir[] = "/tmp/sona-files-XXXXXX";
    make_dir(dir);
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    const char *paths[] = {fifo, "/dev/zero", dir};
    sona_engine *e = make();
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(sona_load(e, paths[i]), SONA_E_IO, "sona_load(%s)", paths[i]);
        cr_expect(strstr(sona_engine_last_error(e), "not a regular file") != NULL, "sona_load(%s): %s", paths[i],
                  sona_engine_last_error(e));
        sona_engine_config c;
        cr_expect_eq(sona_state_config(paths[i], &c), SONA_E_IO, "sona_state_config(%s)", paths[i]);
        cr_expect(strstr(sona_last_error(), "not a regular file") != NULL, "sona_state_config(%s): %s", paths[i],
                  sona_last_error());
    }
    /* Still a working engine, and a real file still loads. */
    char path[300];
    snprintf(path, sizeof path, "%s/state.sona", dir);
    cr_assert_eq(sona_save(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    cr_expect_eq(sona_load(e, path), SONA_OK, "%s", sona_engine_last_error(e));
    sona_engine_destroy(e);
    remove_tree(dir);
}
