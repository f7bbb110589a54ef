/* SPDX-License-Identifier: MIT */
/* libsona-mpi (sona/comm_mpi.h): the sona_comm callbacks over MPI. Uses only the public API,
 * so libsona never depends on MPI. */
#include "sona/comm_mpi.h"

#include <limits.h>
#include <stdlib.h>

typedef struct mpi_ctx {
    MPI_Comm comm; /* our duplicate */
} mpi_ctx;

/* MPI's status to ours (MPI's message is not kept: the handle names the failing callback). */
static sona_status check(int rc) { return rc == MPI_SUCCESS ? SONA_OK : SONA_E_BACKEND; }

static sona_status m_rank(void *ctx, uint32_t *rank)
{
    int r = 0;
    const sona_status st = check(MPI_Comm_rank(((mpi_ctx *)ctx)->comm, &r));
    *rank = (uint32_t)r;
    return st;
}

static sona_status m_size(void *ctx, uint32_t *size)
{
    int n = 0;
    const sona_status st = check(MPI_Comm_size(((mpi_ctx *)ctx)->comm, &n));
    *size = (uint32_t)n;
    return st;
}

static sona_status m_allreduce(void *ctx, float *data, size_t n)
{
    /* MPI counts are int: longer vectors go in pieces. */
    for (size_t done = 0; done < n;) {
        const size_t part = n - done < (size_t)INT_MAX ? n - done : (size_t)INT_MAX;
        const sona_status st = check(MPI_Allreduce(MPI_IN_PLACE, data + done, (int)part,
                                                   MPI_FLOAT, MPI_SUM, ((mpi_ctx *)ctx)->comm));
        if (st != SONA_OK)
            return st;
        done += part;
    }
    return SONA_OK;
}

static sona_status m_allgather(void *ctx, const void *send, size_t bytes, void *recv)
{
    if (bytes > (size_t)INT_MAX)
        return SONA_E_SIZE; /* each rank's block is one MPI count of bytes */
    return check(MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE,
                               ((mpi_ctx *)ctx)->comm));
}

static void m_destroy(void *ctx)
{
    mpi_ctx *c = ctx;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized)
        MPI_Comm_free(&c->comm);
    free(c);
}

sona_status sona_comm_mpi(MPI_Comm comm, sona_comm **out)
{
    if (!out)
        return SONA_E_NULL;
    *out = NULL;
    int init = 0, finalized = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&finalized);
    if (!init || finalized)
        return SONA_E_STATE;
    mpi_ctx *c = malloc(sizeof *c);
    if (!c)
        return SONA_E_NOMEM;
    if (MPI_Comm_dup(comm, &c->comm) != MPI_SUCCESS) {
        free(c);
        return SONA_E_BACKEND;
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    const sona_comm_ops ops = {c, m_rank, m_size, m_allreduce, m_allgather, m_destroy};
    const sona_status st = sona_comm_create(&ops, out);
    if (st != SONA_OK)
        m_destroy(c);
    return st;
}
