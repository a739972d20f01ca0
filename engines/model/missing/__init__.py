"""Missing MR sequences: what the cascade is fed in place of an absent channel.

* :mod:`.fills` -- the candidate fills (zero, substitution, intensity-mapped substitution,
  synthesis) applied to a preprocessed crop, per cascade stage group (WT; TC and EN);
* :mod:`.synthesis` -- the small 3-D network that predicts absent sequences from the others;
* :mod:`.strategies` -- the measured table that says which fill each subset of sequences gets,
  and what Dice to expect per region;
* ``assets/`` -- the synthesis weights, the intensity references and the table, each named with
  the command, data and seed that made them in ``assets/manifest.json``.

May import: :mod:`engines.model` (the preprocessing's crop and channel order).
"""
