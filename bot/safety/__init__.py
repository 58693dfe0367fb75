"""Image safety: every generated image is classified before the bot posts it.

- :mod:`bot.safety.classifier`: the :class:`~bot.safety.classifier.ImageClassifier`
  protocol and its :class:`~bot.safety.classifier.Verdict`.
- :mod:`bot.safety.nudenet`: the real classifier, NudeNet's detector (an ONNX model
  shipped in the ``nudenet`` wheel, run with onnxruntime). Opt-in (``nsfw-filter``
  extra): the wheel's metadata says MIT, the licence text it ships is AGPL-3.0.
- :mod:`bot.safety.service`: :class:`~bot.safety.service.ImageSafety`, what the job
  runner asks (classification off the event loop) and the per-channel rule.
"""

from bot.safety.classifier import ImageClassifier, Verdict
from bot.safety.service import ImageSafety, build_classifier, may_post

__all__ = ["ImageClassifier", "ImageSafety", "Verdict", "build_classifier", "may_post"]
