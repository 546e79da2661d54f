Feature: GPU preflight: no engine is silently given the CPU
  At start-up, and again at every reading of the GPU observation loop, the daemon looks at the
  node's GPUs (here: a JSON fixture standing in for NVML). With require_gpu = true (the
  default) and no usable GPU, preloads are refused with GPU_REQUIRED (503) and /health says
  why; --dev (require_gpu = false) allows CPU-only engines for development. GPUs that go away
  turn preloads to GPU_REQUIRED until they are back. GET /v2/gpus lists what the daemon sees.
  Requirements: OC-POOL-3012 (no CPU inference spillover; fail fast), OC-POOL-3002 (fail fast
  before anything is spawned).

  Scenario: A node without a GPU refuses preloads when a GPU is required
    Given a running daemon configured with:
      | require_gpu | true |
    When pool "p1" is preloaded with an engine-sim
    Then the answer is 503 with code "GPU_REQUIRED"
    And the answer's "error" mentions "a GPU is required and none is usable: the GPU fixture"
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
