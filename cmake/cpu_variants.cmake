# One source file per CPU variant (its ops and host kernels), each compiled with its own ISA flags
# (never -march=native): the library runs on any CPU of the architecture and picks a variant at
# run time.
set(SONA_CPU_DIR ${PROJECT_SOURCE_DIR}/src/cpu)
target_sources(sona_objects PRIVATE ${SONA_CPU_DIR}/host_mem.c ${SONA_CPU_DIR}/parallel.c
  ${SONA_CPU_DIR}/ops_scalar.c)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|i.86")
  target_sources(sona_objects PRIVATE ${SONA_CPU_DIR}/ops_avx2.c ${SONA_CPU_DIR}/ops_avx512.c)
  set_source_files_properties(${SONA_CPU_DIR}/ops_avx2.c PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
  set_source_files_properties(${SONA_CPU_DIR}/ops_avx512.c PROPERTIES
    COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx2;-mfma")
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
  target_sources(sona_objects PRIVATE ${SONA_CPU_DIR}/ops_neon.c)
endif()
