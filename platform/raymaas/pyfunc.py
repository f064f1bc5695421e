"""The import path of the model code that models registered before raymaas 0.2 pickled.

Those models hold `raymaas.pyfunc.TorchClassifier`; where this version of raymaas is already
imported (a Serve replica, `raymaas predict`), MLflow resolves that name here rather than in
the copy the model carries. New models name `raymaas.modelcode.pyfunc.TorchClassifier`.
"""

from raymaas.modelcode.pyfunc import TorchClassifier, classifier_signature, log_classifier

__all__ = ["TorchClassifier", "classifier_signature", "log_classifier"]
