Feature: The last engine's GPU memory is back before the next start
  An engine's workers, or the driver, may still hold its GPU memory after the engine process
  has ended (a tensor-parallel worker that outlived a SIGKILL, memory the driver frees late).
  An engine started on those GPUs meanwhile fails with an out-of-memory that looks like its
  own fault. So before a restart, a half-open trial or a reload starts on the GPUs of the
  pool's last engine, the daemon waits, up to [gpu] release_timeout_ms, until NVML lists none
  of that engine's processes (its pid, its session) on the GPUs of the mask and their free
  memory is back (within [gpu] release_slack_bytes): recorded as GpuMemoryReleased with the
  time it took. At the bound the start fails, recorded as GpuMemoryStuck naming the GPU, the
  processes and the bytes still held, and nothing is started.

  Background:
    Given the node's GPUs are:
      | index | uuid                                     | name             | vram_total | vram_free |
      | 0     | GPU-5c0ffee0-0000-4000-8000-000000000000 | NVIDIA H100 80GB | 80 GiB     | 70 GiB    |

  Scenario: A restart waits until the killed engine's memory is free again
    Given a running daemon on a manual clock, configured with:
      | gpu.poll_interval_ms | 100 |
    And pool "p1" is ready with an engine-sim on the device mask "0"
    When the GPUs list the engine of pool "p1" on GPU 0 using 8192 MiB
    And the free VRAM of GPU 0 drops to 62 GiB
    And the engine of pool "p1" is killed by SIGKILL from outside the daemon
    Then pool "p1" reaches phase "starting"
    And pool "p1" stays in phase "starting" with 1 engine spawned
    And the events of pool "p1" include 0 "GpuMemoryReleased"
    When GPU 0 lists no engine of pool "p1" any more and has 70 GiB free
    Then pool "p1" becomes ready
    And the events of pool "p1" include, in this order, "EngineExited, RestartScheduled, EngineStartRequested, GpuMemoryReleased, EngineSpawned, PoolReady"
    And the events of pool "p1" include 0 "GpuMemoryStuck"

  Scenario: Memory still held at the bound fails the start and names what holds it
    Given a running daemon configured with:
      | gpu.poll_interval_ms   | 100 |
      | gpu.release_timeout_ms | 500 |
    And pool "p1" is ready with an engine-sim on the device mask "0"
    When the GPUs list the engine of pool "p1" on GPU 0 using 8192 MiB
    And the engine of pool "p1" is killed by SIGKILL from outside the daemon
    Then pool "p1" settles in backoff
    And the last "GpuMemoryStuck" of pool "p1" has "gpu_uuid" "GPU-5c0ffee0-0000-4000-8000-000000000000"
    And the last "GpuMemoryStuck" of pool "p1" has "bytes" 8589934592
    And pool "p1" has a last error containing "GPU memory was not released"
    And pool "p1" has a last error containing "GPU-5c0ffee0-0000-4000-8000-000000000000"
    And the events of pool "p1" include 1 "EngineSpawned"

  Scenario: A first start has no last engine to wait for
    Given a running daemon
    And pool "p1" is ready with an engine-sim on the device mask "0"
    Then the events of pool "p1" include 0 "GpuMemoryReleased"
