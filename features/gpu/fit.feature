Feature: VRAM and host RAM fit: a preload that cannot fit fails fast
  Before anything is spawned, a preload's vram_required_bytes is checked against the free
  VRAM of the GPUs of its mask (summed; every GPU when there is no mask). Without it, the
  size of the model file is the estimate, and the message says so. A preload that cannot fit
  is refused with INSUFFICIENT_VRAM (503) with the numbers in the message, and nothing is
  started. ram_required_bytes is checked the same way against the host's available memory
  (MemAvailable). The daemon follows the free VRAM the GPUs report.
  Requirements: OC-POOL-3002 (fail fast on insufficient VRAM/RAM), OC-POOL-3020.

  Background:
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA RTX 4090       | 24 GiB     | 20 GiB    |
      | 1     | GPU-7b2e1d3f-0000-4000-8000-000000000001 | NVIDIA RTX 4080       | 16 GiB     | 12 GiB    |

  Scenario: An engine that needs more VRAM than its mask has free is refused before it starts
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "device_mask" set to "0"
    And the prepared engine of pool "p1" has "vram_required_bytes" set to 32212254720
    When pool "p1" is preloaded
    Then the answer is 503 with code "INSUFFICIENT_VRAM"
    And the answer's "error" mentions "needs 32212254720 bytes (30.0 GiB) of VRAM"
    And the answer's "error" mentions "GPU 0 (GPU-6a1f0c2e-0000-4000-8000-000000000000) has 21474836480 bytes (20.0 GiB) free"
    And no engine was started for pool "p1"

  Scenario: The free VRAM of every GPU of the mask counts
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "device_mask" set to "0,1"
    And the prepared engine of pool "p1" has "vram_required_bytes" set to 32212254720
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" is running

  Scenario: Without vram_required_bytes the model file's size is the estimate, and said to be
    Given a model file "big.gguf" of 40 GiB
    And a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" serves the model file "big.gguf"
    When pool "p1" is preloaded
    Then the answer is 503 with code "INSUFFICIENT_VRAM"
    And the answer's "error" mentions "needs 42949672960 bytes (40.0 GiB) of VRAM (estimated from the model file size)"
    And the answer's "error" mentions "have 34359738368 bytes (32.0 GiB) free"
    And no engine was started for pool "p1"

  Scenario: A model file that fits the estimate is preloaded
    Given a model file "small.gguf" of 8 GiB
    And a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" serves the model file "small.gguf"
    And the prepared engine of pool "p1" has "device_mask" set to "1"
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" is running

  Scenario: Less free VRAM reported by the GPUs is what the next preload is checked against
    Given a running daemon configured with:
      | gpu.poll_interval_ms | 50 |
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "device_mask" set to "1"
    And the prepared engine of pool "p1" has "vram_required_bytes" set to 8589934592
    When the free VRAM of GPU 1 drops to 4 GiB
    And pool "p1" is preloaded
    Then the answer is 503 with code "INSUFFICIENT_VRAM"
    And the answer's "error" mentions "has 4294967296 bytes (4.0 GiB) free"
    And no engine was started for pool "p1"

  Scenario: An engine that needs more host RAM than is available is refused
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "ram_required_bytes" set to 1125899906842624
    When pool "p1" is preloaded
    Then the answer is 503 with code "INSUFFICIENT_VRAM"
    And the answer's "error" mentions "needs 1125899906842624 bytes (1048576.0 GiB) of host RAM"
    And the answer's "error" mentions "is available"
    And no engine was started for pool "p1"

  Scenario: A host RAM requirement that fits is preloaded
    Given a running daemon
    And pool "p1" is prepared as an engine-sim
    And the prepared engine of pool "p1" has "ram_required_bytes" set to 1048576
    When pool "p1" is preloaded
    Then the answer is 200
