"""Transfer channels: how an expert (VM) takes what the foundation model (FM) knows.

KD and ExFM distil FM predictions; SUM, LoopFM and TAE feed FM representations in as inputs. The FM
side is `fxrec publish` (fxrec/jobs/publish.py); the VM side joins published outputs as of each event
(published.py) and each channel (one file each) adds tokens and loss terms, and says what it reads
at serving (serving.py), under the same as-of rules (asof.py). `registry.register_channel` adds one.
"""
