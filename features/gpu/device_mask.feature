Feature: Device masks: engines run on the GPUs they are given, and only there
  A preload's device_mask names GPUs by index ("0,1"), by name ("GPU0,GPU1"), by GPU UUID or
  by MIG device UUID. It is checked against the node's GPUs before anything is spawned: an
  entry that names no device, or names one twice, is refused with INVALID_DEVICE_MASK (422)
  naming the entry. The mask reaches the engine as CUDA_VISIBLE_DEVICES with
  CUDA_DEVICE_ORDER=PCI_BUS_ID. Two pools may not claim one GPU unless [gpu] allow_sharing is
  set; a stopped pool frees its GPUs. An engine the GPU observation loop finds on a GPU
  outside its mask is recorded as a DeviceMaskViolation in the pool's history, and a GPU fault
  (Xid) stops the pools whose mask covers that GPU, and only those. A node with no GPU (no
  NVIDIA driver, or --dev on a machine without one) has 0 GPUs to name: a mask there is refused
  the same way, and a pool without one runs its engine on the CPU.
  Requirements: OC-POOL-3020 (placement respects device masks; no spillover across masks),
  OC-POOL-3012 (no engine silently elsewhere), OC-POOL-3010 (driver errors).

  Rule: On a node with GPUs, a mask names some of them

    Background:
      Given the node's GPUs are:
        | index | uuid                                     | name                  | vram_total | vram_free |
        | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA H100 80GB HBM3 | 80 GiB     | 79 GiB    |
        | 1     | GPU-7b2e1d3f-0000-4000-8000-000000000001 | NVIDIA A100-SXM4-80GB | 80 GiB     | 79 GiB    |
        | 2     | GPU-8c3f2e4a-0000-4000-8000-000000000002 | NVIDIA A100-SXM4-40GB | 40 GiB     | 39 GiB    |
      And GPU 2 has the MIG devices:
        | uuid                                     | name    | vram_total | vram_free |
        | MIG-0c1d2e3f-0000-4000-8000-000000000020 | 3g.20gb | 20 GiB     | 19 GiB    |
        | MIG-0c1d2e3f-0000-4000-8000-000000000021 | 3g.20gb | 20 GiB     | 19 GiB    |

    Scenario Outline: A mask of <what> is accepted and reaches the engine
      Given a running daemon
      And pool "p1" is prepared as an engine-sim
      And the prepared engine of pool "p1" has "device_mask" set to "<mask>"
      When pool "p1" is preloaded
      Then the answer is 200
      And the engine of pool "p1" runs with CUDA_VISIBLE_DEVICES "<visible>" and CUDA_DEVICE_ORDER "PCI_BUS_ID"
      When the status of pool "p1" is requested
      Then the answer's "device_mask" is "<mask>"

      Examples:
        | what               | mask                                     | visible                                  |
        | indexes            | 0,1                                      | 0,1                                      |
        | GPU names          | GPU0,GPU1                                | 0,1                                      |
        | a GPU UUID         | GPU-7b2e1d3f-0000-4000-8000-000000000001 | GPU-7b2e1d3f-0000-4000-8000-000000000001 |
        | a MIG device UUID  | MIG-0c1d2e3f-0000-4000-8000-000000000021 | MIG-0c1d2e3f-0000-4000-8000-000000000021 |

    Scenario Outline: A mask entry that names no device of the node is refused, naming it
      Given a running daemon
      And pool "p1" is prepared as an engine-sim
      And the prepared engine of pool "p1" has "device_mask" set to "<mask>"
      When pool "p1" is preloaded
      Then the answer is 422 with code "INVALID_DEVICE_MASK"
      And the answer's "error" mentions "entry '<entry>' is not a GPU or MIG device of this node"
      And the answer's "error" mentions "GPUs: 0, 1, 2"
      And no engine was started for pool "p1"

      Examples:
        | mask                                       | entry                                    |
        | 0,7                                        | 7                                        |
        | GPU1,GPU9                                  | GPU9                                     |
        | GPU-ffffffff-0000-4000-8000-000000000000   | GPU-ffffffff-0000-4000-8000-000000000000 |
        | MIG-ffffffff-0000-4000-8000-000000000000   | MIG-ffffffff-0000-4000-8000-000000000000 |

    Scenario: A mask naming one device twice is refused, naming both entries
      Given a running daemon
      And pool "p1" is prepared as an engine-sim
      And the prepared engine of pool "p1" has "device_mask" set to "0,GPU-6a1f0c2e-0000-4000-8000-000000000000"
      When pool "p1" is preloaded
      Then the answer is 422 with code "INVALID_DEVICE_MASK"
      And the answer's "error" mentions "entry 'GPU-6a1f0c2e-0000-4000-8000-000000000000' names GPU 0"
      And the answer's "error" mentions "already named by '0'"
      And no engine was started for pool "p1"

    Scenario: Two pools may not claim one GPU; the refusal names the other pool
      Given a running daemon
      And pool "p1" is ready with an engine-sim on the device mask "0"
      And pool "p2" is prepared as an engine-sim
      And the prepared engine of pool "p2" has "device_mask" set to "GPU1,GPU0"
      When pool "p2" is preloaded
      Then the answer is 422 with code "INVALID_DEVICE_MASK"
      And the answer's "error" mentions "GPU 0 (GPU-6a1f0c2e-0000-4000-8000-000000000000) is claimed by pool 'p1'"
      And the answer's "error" mentions "[gpu] allow_sharing = true"
      And no engine was started for pool "p2"
      Given the prepared engine of pool "p2" has "device_mask" set to "1"
      When pool "p2" is preloaded
      Then the answer is 200
      And the engine of pool "p2" runs with CUDA_VISIBLE_DEVICES "1" and CUDA_DEVICE_ORDER "PCI_BUS_ID"

    Scenario: A GPU and a MIG device of it are one claim; two MIG devices of a GPU are not
      Given a running daemon
      And pool "p1" is ready with an engine-sim on the device mask "MIG-0c1d2e3f-0000-4000-8000-000000000020"
      And pool "p2" is prepared as an engine-sim
      And the prepared engine of pool "p2" has "device_mask" set to "2"
      When pool "p2" is preloaded
      Then the answer is 422 with code "INVALID_DEVICE_MASK"
      And the answer's "error" mentions "claimed by pool 'p1'"
      Given the prepared engine of pool "p2" has "device_mask" set to "MIG-0c1d2e3f-0000-4000-8000-000000000021"
      When pool "p2" is preloaded
      Then the answer is 200

    Scenario: With sharing allowed, two pools run on one GPU
      Given a running daemon configured with:
        | gpu.allow_sharing | true |
      And pool "p1" is ready with an engine-sim on the device mask "0"
      And pool "p2" is prepared as an engine-sim
      And the prepared engine of pool "p2" has "device_mask" set to "GPU0"
      When pool "p2" is preloaded
      Then the answer is 200
      And the engine of pool "p1" runs with CUDA_VISIBLE_DEVICES "0" and CUDA_DEVICE_ORDER "PCI_BUS_ID"
      And the engine of pool "p2" runs with CUDA_VISIBLE_DEVICES "0" and CUDA_DEVICE_ORDER "PCI_BUS_ID"

    Scenario: A stopped pool frees its GPU
      Given a running daemon
      And pool "p1" is ready with an engine-sim on the device mask "0"
      And pool "p2" is prepared as an engine-sim
      And the prepared engine of pool "p2" has "device_mask" set to "0"
      When pool "p2" is preloaded
      Then the answer is 422 with code "INVALID_DEVICE_MASK"
      When pool "p1" is stopped
      Then pool "p1" reaches phase "stopped"
      When pool "p2" is preloaded
      Then the answer is 200
      And the engine of pool "p2" runs with CUDA_VISIBLE_DEVICES "0" and CUDA_DEVICE_ORDER "PCI_BUS_ID"

    Scenario: An engine seen on a GPU outside its mask is recorded
      Given a running daemon configured with:
        | gpu.poll_interval_ms | 50 |
      And pool "p1" is ready with an engine-sim on the device mask "0"
      When the GPUs list the engine of pool "p1" on GPU 1 using 2048 MiB
      Then the events of pool "p1" record "DeviceMaskViolation" with "gpu_uuid" "GPU-7b2e1d3f-0000-4000-8000-000000000001"
      And pool "p1" has a last error containing "GPU-7b2e1d3f-0000-4000-8000-000000000001"

    Scenario: A GPU fault stops the pools on that GPU, and only those
      Given a running daemon configured with:
        | gpu.poll_interval_ms | 50 |
      And pool "p1" is ready with an engine-sim on the device mask "0"
      And pool "p2" is ready with an engine-sim on the device mask "1"
      And the engine of pool "p1" is noted
      And the engine of pool "p2" is noted
      When the driver reports Xid 79 on GPU 0
      Then pool "p1" becomes unready with a last error containing "Xid 79"
      And the noted engine of pool "p1" is gone
      And pool "p2" is live and ready
      And pool "p2" has no last error
      And the engine of pool "p2" is the noted one, still running

  Rule: A node with no GPU has 0 GPUs to name

    Scenario Outline: A mask on a node with no GPU is refused, saying the node has 0 GPUs
      Given a running daemon
      And pool "p1" is prepared as an engine-sim
      And the prepared engine of pool "p1" has "device_mask" set to "<mask>"
      When pool "p1" is preloaded
      Then the answer is 422 with code "INVALID_DEVICE_MASK"
      And the answer's "error" mentions "pool 'p1': invalid device mask '<mask>'"
      And the answer's "error" mentions "this node has 0 GPUs"
      And the answer's "error" mentions "remove prepared.device_mask"
      And no engine was started for pool "p1"

      Examples:
        | mask                                     |
        | 7                                        |
        | 0                                        |
        | GPU0,GPU1                                |
        | MIG-0c1d2e3f-0000-4000-8000-000000000020 |

    Scenario: A pool without a mask runs on the CPU of a node with no GPU
      Given a running daemon
      And pool "p1" is prepared as an engine-sim
      When pool "p1" is preloaded
      Then the answer is 200
      And pool "p1" is live and ready
