"""What an ads model is trained on: labels as the ads system sees them, conversions at any window, and
auxiliary heads for the cohorts a global objective serves worst.

- `delays`: per-advertiser conversion-delay rates (an exponential fit to the delays observed before a
  cutoff, each truncated at what could have been observed, shrunk toward the global rate).
- `interpolation`: Personalized Interpolation, a conversion probability for any window from a short and
  a long fixed-window head, and the global-rate baseline.
- `window_rates`: the per-advertiser rates a model with window heads is served with, fitted at its
  training cutoff and saved as `models/<m>/delay_rates.json` (`fxrec serve` answers `window_s`).
- `windows`: fixed-window conversion heads (`windows:` in a model config), each trained only on
  examples whose window has closed by the training cutoff.
- `feedback`: delayed feedback (`train.delayed_feedback`): observed-so-far, wait-for-maturity, or a
  fresh model corrected for conversions that have not happened yet.
- `c2al`: cohort-contrastive auxiliary learning (`c2al:` in a model config): the two cohorts a
  baseline's predictions tell apart most (Jensen–Shannon, `fxrec.metrics.cohorts`), two auxiliary heads
  on cohort-masked labels with weights λ, dropped when the model is loaded to serve.
- `schedule`: what the progressive trainer trains at the end of each day under those options.
"""
