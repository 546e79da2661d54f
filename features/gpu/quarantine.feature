Feature: A GPU that keeps failing is quarantined, and nothing starts on it until an operator ends it
  Hardware-class faults of one GPU (Xid 48, 63, 64, 74, 79, 92, 94, 95, 119, 120: fallen off
  the bus, uncorrectable ECC, NVLink, GSP; and driver resets) reaching [gpu] quarantine_after
  (default 3) within [gpu] quarantine_window_ms (default 1 h) quarantine it: GpuQuarantined is
  journaled, the pools whose device mask covers it (a pool without a mask sees every GPU) are
  stopped and not restarted onto it (RestartHeld: their last error says GPU_QUARANTINED), and a
  preload naming it answers 503 GPU_QUARANTINED. Application Xids (13, 31, 43: a faulty kernel,
  not a faulty GPU) never count. GET /v2/gpus and the metric gpu_quarantined show it;
  POST /v2/gpus/{uuid}/unquarantine ends it (GpuUnquarantined) and its fault count starts
  again. It is in the journal, so it survives a daemon restart. Over NVML, an Xid is an event
  of the GPU's NVML event set (a double-bit ECC error another, reported as Xid 48), and a
  driver reset the event wait answering "GPU is lost".

  Background:
    Given the node's GPUs are:
      | index | uuid                                     | name                  | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
      | 1     | GPU-7b2e1d3f-0000-4000-8000-000000000001 | NVIDIA A100-SXM4-80GB | 80 GiB     | 79 GiB    |
    And a running daemon configured with:
      | gpu.poll_interval_ms | 50 |

  Scenario: Three Xid 79 quarantine the GPU; its pool is stopped and not restarted, the other pool serves on
    Given pool "p1" is ready with an engine-sim on the device mask "0"
    And pool "p2" is ready with an engine-sim on the device mask "1"
    And the engine of pool "p2" is noted
    When the driver reports Xid 79 on GPU 0
    And the driver reports Xid 79 on GPU 0
    And the driver reports Xid 79 on GPU 0
    Then GPU 0 is quarantined
    And the node's events record "GpuQuarantined" of GPU 0 with "faults" 3
    And the events of pool "p1" record "RestartHeld" with "gpu_uuid" "GPU-6a1f0c2e-0000-4000-8000-000000000000"
    And the events of pool "p1" end with "RestartHeld"
    And the engine of pool "p1" is gone
    And pool "p1" is in phase "failed"
    And pool "p1" has a last error containing "GPU_QUARANTINED"
    And pool "p1" has a last error containing "POST /v2/gpus/GPU-6a1f0c2e-0000-4000-8000-000000000000/unquarantine"
    And GPU 1 is not quarantined
    And pool "p2" is live and ready
    And the engine of pool "p2" is the noted one, still running
    When the metrics are scraped
    Then the metric "gpu_quarantined" of GPU "GPU-6a1f0c2e-0000-4000-8000-000000000000" is 1
    And the metric "gpu_quarantined" of GPU "GPU-7b2e1d3f-0000-4000-8000-000000000001" is 0

  Scenario: Driver resets are hardware faults: three quarantine the GPU
    Given pool "p1" is ready with an engine-sim on the device mask "0"
    When the driver reports a reset of GPU 0
    And the driver reports a reset of GPU 0
    And the driver reports a reset of GPU 0
    Then GPU 0 is quarantined
    And the node's events record "GpuQuarantined" of GPU 0 with "faults" 3
    And the node's events record "DriverResetObserved" of GPU 0 with "gpu_uuid" "GPU-6a1f0c2e-0000-4000-8000-000000000000"
    And GPU 1 is not quarantined

  Scenario: A double-bit ECC error is reported as Xid 48, a hardware fault
    Given pool "p1" is ready with an engine-sim on the device mask "0"
    When the driver reports a double-bit ECC error on GPU 0
    Then the daemon records 1 Xid
    And the node's events record "GpuXidObserved" of GPU 0 with "xid" 48
    When the driver reports a double-bit ECC error on GPU 0
    And the driver reports a double-bit ECC error on GPU 0
    Then GPU 0 is quarantined
    And the node's events record "GpuQuarantined" of GPU 0 with "faults" 3

  Scenario: Application Xids never quarantine a GPU
    Given pool "p1" is ready with an engine-sim on the device mask "0"
    When the driver reports Xid 13 on GPU 0
    And the driver reports Xid 43 on GPU 0
    And the driver reports Xid 13 on GPU 0
    And the driver reports Xid 43 on GPU 0
    Then the daemon records 4 Xids
    And GPU 0 is not quarantined
    And the events of pool "p1" include 0 "RestartHeld"

  Scenario: A preload naming a quarantined GPU is refused with GPU_QUARANTINED
    Given pool "p1" is ready with an engine-sim on the device mask "0"
    When the driver reports Xid 79 on GPU 0
    And the driver reports Xid 48 on GPU 0
    And the driver reports Xid 95 on GPU 0
    Then GPU 0 is quarantined
    Given pool "p3" is prepared as an engine-sim
    And the prepared engine of pool "p3" has "device_mask" set to "GPU-6a1f0c2e-0000-4000-8000-000000000000"
    When pool "p3" is preloaded
    Then the answer is 503 with code "GPU_QUARANTINED"
    And the answer's "error" mentions "GPU GPU-6a1f0c2e-0000-4000-8000-000000000000 is quarantined"
    And the answer's "error" mentions "POST /v2/gpus/GPU-6a1f0c2e-0000-4000-8000-000000000000/unquarantine"
    And the answer has no Retry-After
    And no engine was started for pool "p3"
    Given the prepared engine of pool "p3" has "device_mask" set to "1"
    When pool "p3" is preloaded
    Then the answer is 200

  Scenario: Unquarantine over the API ends it, and a preload works again
    Given pool "p1" is ready with an engine-sim on the device mask "0"
    When the driver reports Xid 79 on GPU 0
    And the driver reports Xid 79 on GPU 0
    And the driver reports Xid 79 on GPU 0
    Then GPU 0 is quarantined
    And the events of pool "p1" record "RestartHeld" with "gpu_uuid" "GPU-6a1f0c2e-0000-4000-8000-000000000000"
    And the events of pool "p1" end with "RestartHeld"
    When GPU 0 is unquarantined over the API
    Then the answer is 200
    And the answer's "quarantined" is false
    And GPU 0 is not quarantined
    And the node's events record "GpuUnquarantined" of GPU 0 with "by" "api"
    When pool "p1" is preloaded
    Then the answer is 200
    And pool "p1" becomes ready
    When the metrics are scraped
    Then the metric "gpu_quarantined" of GPU "GPU-6a1f0c2e-0000-4000-8000-000000000000" is 0

  Scenario: Unquarantine of a GPU the node does not have names it
    When a client sends POST "/v2/gpus/GPU-ffffffff-0000-4000-8000-000000000000/unquarantine"
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "no GPU 'GPU-ffffffff-0000-4000-8000-000000000000' on this node"

  Scenario: The quarantine survives a daemon restart
    Given pool "p1" is ready with an engine-sim on the device mask "0"
    When the driver reports Xid 79 on GPU 0
    And the driver reports Xid 79 on GPU 0
    And the driver reports Xid 79 on GPU 0
    Then GPU 0 is quarantined
    And the events of pool "p1" record "RestartHeld" with "gpu_uuid" "GPU-6a1f0c2e-0000-4000-8000-000000000000"
    And the events of pool "p1" end with "RestartHeld"
    When the daemon is restarted over the same journal
    Then GPU 0 is quarantined
    And pool "p1" is in phase "failed"
    And pool "p1" has a last error containing "GPU_QUARANTINED"
    When pool "p1" is preloaded
    Then the answer is 503 with code "GPU_QUARANTINED"
