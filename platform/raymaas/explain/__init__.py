"""Why a model answered what it did: one attribution per input feature of each row.

    attribution   Integrated Gradients (Captum) for the platform's torch models, against a
                  baseline stored with the model; Kernel SHAP (shap) for any other MLflow
                  model, over a background sample (the reference profile's, or a file's);
                  global feature importance (mean absolute attribution) at training time
    maps          an image's attributions as a PNG (red toward the output, blue away)

Importing this package imports neither Ray nor Serve; Captum and shap load on first use.
"""
