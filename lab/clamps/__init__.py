"""Clamps ("artificial optogenetics"): fix an activation to a value for a window of training steps.

- `schedules`: the strength schedules (SCHEDULES, NEVER, schedule_strength).
- `values`: the value kinds, one `ValueKind` registry entry per kind (KINDS, VALUES), with the ideal
  patterns they use; a new kind is one entry there.
- `clamp_set`: the clamp set of a run (`Clamps`): config checks, specs and traced arrays, and the
  clamped forward pass.
"""
