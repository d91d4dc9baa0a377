"""Evaluation protocols for pretrained encoders: one :class:`maskfm.eval.protocol.Protocol`
subclass per ``conf/eval/<name>.yaml`` (whose ``_target_`` names it)."""
