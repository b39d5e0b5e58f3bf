"""The model work: each module defines run kinds on the job engine and calls `training/`.

`registry` (model versions, lineage) and `scoring` at the bottom; `generation`, `reward` and
`selection` (prioritise, drift) above them; `ppo`, `sft_dpo_rloo` and `compression` above those;
`rounds` at the top. A kind imports only what sits below it (import-linter).
"""
