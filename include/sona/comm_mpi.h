/* SPDX-License-Identifier: MIT */
/* libsona-mpi: sona_comm over an MPI communicator. A separate library (link -lsona-mpi and your
 * MPI), so that libsona itself never links MPI; built where MPI's development files are found.
 * The application owns MPI_Init / MPI_Finalize. */
#ifndef SONA_COMM_MPI_H
#define SONA_COMM_MPI_H

#include "sona/comm.h"

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A sona_comm over a duplicate of comm (MPI_Comm_dup: libsona's collectives never mix with
 * the application's), whose errors return (MPI_ERRORS_RETURN) as SONA_E_BACKEND instead of
 * aborting; an all-gather of more than INT_MAX bytes a rank is SONA_E_SIZE. A collective over comm: every rank calls it. MPI must be
 * initialised (SONA_E_STATE otherwise). Thread safety: the handle's collectives run in the
 * calling thread, so call them (and sona_sync) from a thread the MPI thread level allows (with
 * MPI_THREAD_FUNNELED, the main thread). Destroy the handle (sona_comm_destroy, which frees the
 * duplicate) before MPI_Finalize; one destroyed after it only frees its memory. */
SONA_API sona_status sona_comm_mpi(MPI_Comm comm, sona_comm **out);

#ifdef __cplusplus
}
#endif
#endif /* SONA_COMM_MPI_H */
