Feature: Heterogeneous tensor split over the GPUs of a mask
  For a mask of two or more GPUs, tensor_split "auto" plans the split of the model from the
  GPUs' free VRAM (proportional to it, so every GPU keeps the same share free, and capped so
  that no GPU is asked for more than it has: the smallest GPU bounds the plan). Explicit
  ratios are validated: one per GPU of the mask, non-negative, summing to 1; anything else is
  INVALID_REQUEST (400) naming prepared.tensor_split. The plan reaches llama.cpp as
  --tensor-split; a provisioner's own --tensor-split flag wins and is never duplicated.
  Nothing is split unless asked, and a single GPU is never split. A split that cannot fit is
  INSUFFICIENT_VRAM before anything is spawned.
  Requirements: OC-POOL-3021 (heterogeneous split ratios explicit and capped by the smallest
  GPU), OC-POOL-3002 (fail fast), OC-POOL-3020.

  Background:
    Given the node's GPUs are:
      | index | uuid                                     | name            | vram_total | vram_free |
      | 0     | GPU-6a1f0c2e-0000-4000-8000-000000000000 | NVIDIA RTX 4090 | 24 GiB     | 20 GiB    |
      | 1     | GPU-7b2e1d3f-0000-4000-8000-000000000001 | NVIDIA RTX 4080 | 16 GiB     | 12 GiB    |
      | 2     | GPU-8c3f2e4a-0000-4000-8000-000000000002 | NVIDIA RTX 3060 | 12 GiB     | 7 GiB     |
    And a running daemon
    And pool "p1" is prepared as an engine-sim

  Scenario: "auto" splits in proportion to the free VRAM of the mask's GPUs
    Given the prepared engine of pool "p1" has "device_mask" set to "0,1"
    And the prepared engine of pool "p1" has "tensor_split" set to "auto"
    And the prepared engine of pool "p1" has "vram_required_bytes" set to 17179869184
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" was started with a --tensor-split proportional to the free VRAM of GPUs "0,1"
    And the engine of pool "p1" was started with --tensor-split "0.625,0.375"
    And the last "PreloadRequested" of pool "p1" has "engine.tensor_split" [0.625, 0.375]

  Scenario: "auto" over three unequal GPUs, without a stated requirement
    Given the prepared engine of pool "p1" has "device_mask" set to "GPU2,GPU0,GPU1"
    And the prepared engine of pool "p1" has "tensor_split" set to "auto"
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" was started with a --tensor-split proportional to the free VRAM of GPUs "2,0,1"

  Scenario: Explicit ratios are passed through
    Given the prepared engine of pool "p1" has "device_mask" set to "0,1"
    And the prepared engine of pool "p1" has "tensor_split" set to [0.7, 0.3]
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" was started with --tensor-split "0.7,0.3"

  Scenario Outline: Ratios that <problem> are refused, naming prepared.tensor_split
    Given the prepared engine of pool "p1" has "device_mask" set to "0,1"
    And the prepared engine of pool "p1" has "tensor_split" set to <ratios>
    When pool "p1" is preloaded
    Then the answer is 400 with code "INVALID_REQUEST"
    And the answer's "error" mentions "prepared.tensor_split"
    And the answer's "error" mentions "<why>"
    And no engine was started for pool "p1"

    Examples:
      | problem                      | ratios           | why                              |
      | do not sum to 1              | [0.5, 0.6]       | must sum to 1                    |
      | are fewer than the GPUs      | [1.0]            | names 2 device(s)                |
      | are more than the GPUs       | [0.5, 0.25, 0.25] | names 2 device(s)               |
      | include a negative ratio     | [-0.5, 1.5]      | non-negative                     |

  Scenario: Nothing is split unless asked
    Given the prepared engine of pool "p1" has "device_mask" set to "0,1"
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" was started without --tensor-split

  Scenario: A single GPU is never split
    Given the prepared engine of pool "p1" has "device_mask" set to "0"
    And the prepared engine of pool "p1" has "tensor_split" set to "auto"
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" was started without --tensor-split

  Scenario: The provisioner's own --tensor-split flag is kept and not duplicated
    Given the prepared engine of pool "p1" has "device_mask" set to "0,1"
    And the prepared engine of pool "p1" has "tensor_split" set to "auto"
    And the prepared engine of pool "p1" has the flags "--tensor-split 0.5,0.5" appended
    When pool "p1" is preloaded
    Then the answer is 200
    And the engine of pool "p1" was started with --tensor-split "0.5,0.5"

  Scenario: "auto" that cannot fit the free VRAM of the mask is refused
    Given the prepared engine of pool "p1" has "device_mask" set to "0,1"
    And the prepared engine of pool "p1" has "tensor_split" set to "auto"
    And the prepared engine of pool "p1" has "vram_required_bytes" set to 36507222016
    When pool "p1" is preloaded
    Then the answer is 503 with code "INSUFFICIENT_VRAM"
    And the answer's "error" mentions "needs 36507222016 bytes (34.0 GiB) of VRAM"
    And the answer's "error" mentions "have 34359738368 bytes (32.0 GiB) free"
    And no engine was started for pool "p1"

  Scenario: Explicit ratios that ask the smaller GPU for more than it has free are refused
    Given the prepared engine of pool "p1" has "device_mask" set to "0,1"
    And the prepared engine of pool "p1" has "tensor_split" set to [0.2, 0.8]
    And the prepared engine of pool "p1" has "vram_required_bytes" set to 17179869184
    When pool "p1" is preloaded
    Then the answer is 503 with code "INSUFFICIENT_VRAM"
    And the answer's "error" mentions "GPU 1 (GPU-7b2e1d3f-0000-4000-8000-000000000001) has 12884901888 bytes (12.0 GiB) free"
    And the answer's "error" mentions "its share 0.8 of prepared.tensor_split"
    And no engine was started for pool "p1"
