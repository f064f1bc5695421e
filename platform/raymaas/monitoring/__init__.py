"""Watching what is served: the reference profile logged with each trained model, drift of a
window of served inputs against it, and live performance from labels that come later.

    profile   the reference profile: bins and statistics of the training inputs and of the
              validation predictions (logged with every platform-trained model)
    drift     PSI and Kolmogorov-Smirnov on binned counts, and which features are flagged
    live      accuracy, macro precision/recall/F1, RMSE/MAE of predictions against feedback
    rollout   a progressive rollout's decision: advance, promote, hold or roll back a candidate
              version by its live figures against the champion's

Importing this package imports neither Ray nor Serve (nor scipy, until a test runs).
"""
