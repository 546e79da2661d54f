Feature: GPU preflight: no engine is silently given the CPU
  At start-up, and again at every reading of the GPU observation loop, the daemon looks at the
  node's GPUs (here: a JSON fixture, and in a second run NVML over a fake NVML library). With
  require_gpu = true (the default) and no usable GPU, preloads are refused with GPU_REQUIRED
  (503) and /health says why; --dev (require_gpu = false) allows CPU-only engines for
  development. GPUs that go away turn preloads to GPU_REQUIRED until they are back. With a GPU
  required, an engine must show on a GPU of its mask (NVML lists its process) within
  [gpu] placement_timeout_ms of passing its health check, or its start fails with
  CPU_SPILLOVER and it is killed: an engine NVML cannot see is not proven on a GPU. GET
  /v2/gpus lists what the daemon sees, with each engine's processes and their VRAM.
  The scenarios tagged @nvml run only over NVML: they make NVML calls fail (error returns the
  fixture has no calls for).
  Requirements: OC-POOL-3012 (no CPU inference spillover; fail fast), OC-POOL-3002 (fail fast
  before anything is spawned).

  Scenario: A node without a GPU refuses preloads when a GPU is required
    Given a running daemon configured with:
      | require_gpu | true |
    When pool "p1" is preloaded with an engine-sim
    Then the answer is 503 with code "GPU_REQUIRED"
    And the answer's "error" mentions "a GPU is required and none is usable: "
    And the answer's "error" mentions "lists no GPU"
    And the answer's "error" mentions "or run with --dev (require_gpu = false) for CPU-only engines"
    And no engine was started for pool "p1"
    When the daemon's health is requested
    Then the answer is 200
    And the answer's "gpu.available" is false
    And the answer's "gpu.required" is true
    And the answer's "gpu.count" is 0
    And the answer's "gpu.reason" mentions "lists no GPU"
    And the answer's "gpu.reason" mentions "or run with --dev (require_gpu = false) for CPU-only engines"

  Scenario: In development mode a node without a GPU runs a CPU engine
    Given a running daemon configured with:
      | require_gpu | false |
    When pool "p1" is preloaded with an engine-sim
    Then the answer is 200
    And the engine of pool "p1" is running
    And pool "p1" is live and ready
    When the daemon's health is requested
    Then the answer's "gpu.available" is false
    And the answer's "gpu.required" is false

  Scenario: A node with GPUs preloads an engine that runs on them
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
    And a running daemon configured with:
      | require_gpu          | true |
      | gpu.poll_interval_ms | 50   |
    When the daemon's health is requested
    Then the answer's "gpu.available" is true
    And the answer's "gpu.count" is 1
    When pool "p1" is preloaded without waiting with an engine-sim started with "--load-ms 200"
    Then the answer is 202
    When the GPUs list the engine of pool "p1" on GPU 0 using 1024 MiB
    Then pool "p1" becomes ready
    And the GPUs show the engine of pool "p1" on GPU 0 using 1024 MiB

  Scenario: GET /v2/gpus lists the GPUs with their memory and MIG devices
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free | compute_capability |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 70 GiB    | 9.0                |
      | 1     | GPU-7b2e1d3f-0000-4000-8000-000000000001 | NVIDIA A100-SXM4-40GB | 40 GiB     | 39.5 GiB  | 8.0                |
    And GPU 1 has the MIG devices:
      | uuid                                     | name    | vram_total | vram_free |
      | MIG-0c1d2e3f-0000-4000-8000-000000000010 | 1g.10gb | 10 GiB     | 9 GiB     |
      | MIG-0c1d2e3f-0000-4000-8000-000000000011 | 1g.10gb | 10 GiB     | 10 GiB    |
    And a running daemon
    When a client sends GET "/v2/gpus"
    Then the answer is 200
    And the answer lists the node's GPUs
    And the answer's "1.compute_capability" is "8.0"
    And the answer's "1.mig_devices.0.parent_index" is 1
    And the answer's "0.vram_free_bytes" is 75161927680

  Scenario: GPUs that disappear turn preloads to GPU_REQUIRED, and back when they return
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
    And a running daemon configured with:
      | require_gpu          | true |
      | gpu.poll_interval_ms | 50   |
    When the node's GPUs disappear
    Then the daemon eventually sees no GPU
    And the answer's "gpu.available" is false
    And the answer's "gpu.reason" mentions "lists no GPU"
    When pool "p1" is preloaded with an engine-sim
    Then the answer is 503 with code "GPU_REQUIRED"
    And the answer's "error" mentions "lists no GPU"
    And no engine was started for pool "p1"
    When the node's GPUs return
    Then the daemon eventually sees 1 GPU
    And the answer's "gpu.available" is true
    When pool "p1" is preloaded without waiting with an engine-sim started with "--load-ms 200"
    Then the answer is 202
    When the GPUs list the engine of pool "p1" on GPU 0 using 512 MiB
    Then pool "p1" becomes ready

  Scenario: An engine never listed on a GPU of its mask fails with CPU_SPILLOVER and is killed
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
    And a running daemon configured with:
      | require_gpu              | true |
      | gpu.poll_interval_ms     | 50   |
      | gpu.placement_timeout_ms | 300  |
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "device_mask" set to "0"
    When pool "p1" is preloaded
    Then the answer is 500 with code "CPU_SPILLOVER"
    And the answer's "error" mentions "not running on its GPUs"
    And the engine of pool "p1" is gone

  @nvml
  Scenario: Processes NVML cannot list (not supported) prove no placement: CPU_SPILLOVER
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
    And NVML answers "not supported" to nvmlDeviceGetComputeRunningProcesses_v3
    And a running daemon configured with:
      | require_gpu              | true |
      | gpu.poll_interval_ms     | 50   |
      | gpu.placement_timeout_ms | 300  |
    When the daemon's health is requested
    Then the answer's "gpu.available" is true
    When pool "p1" is preloaded without waiting with an engine-sim started with "--load-ms 200"
    Then the answer is 202
    When the GPUs list the engine of pool "p1" on GPU 0 using 1024 MiB
    Then pool "p1" becomes unready with a last error containing "CPU_SPILLOVER"
    And the engine of pool "p1" is gone

  @nvml
  Scenario: NVML refusing the event registration (insufficient permissions) leaves the daemon working, blind to Xids
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
    And NVML answers "insufficient permissions" to nvmlDeviceRegisterEvents
    And a running daemon configured with:
      | require_gpu          | true |
      | gpu.poll_interval_ms | 50   |
    When pool "p1" is preloaded without waiting with an engine-sim started with "--load-ms 200"
    Then the answer is 202
    When the GPUs list the engine of pool "p1" on GPU 0 using 1024 MiB
    Then pool "p1" becomes ready
    And the GPUs show the engine of pool "p1" on GPU 0 using 1024 MiB
    When the driver reports Xid 79 on GPU 0
    And the free VRAM of GPU 0 drops to 60 GiB
    And the free VRAM of GPU 0 drops to 50 GiB
    Then the daemon records 0 Xids
    And pool "p1" is live and ready

  @nvml
  Scenario: A GPU NVML reports lost is no GPU until NVML answers again, then a driver reset
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
    And a running daemon configured with:
      | require_gpu          | true |
      | gpu.poll_interval_ms | 50   |
    Then the daemon eventually sees 1 GPU
    When NVML answers "GPU is lost" to nvmlDeviceGetUUID
    Then the daemon eventually sees no GPU
    And the answer's "gpu.reason" mentions "GPU 0 is lost"
    When pool "p1" is preloaded with an engine-sim
    Then the answer is 503 with code "GPU_REQUIRED"
    When NVML answers normally again
    Then the daemon eventually sees 1 GPU
    And the node's events record "DriverResetObserved" of GPU 0 with "gpu_uuid" "GPU-6a1f0c2e-0000-4000-8000-000000000000"
