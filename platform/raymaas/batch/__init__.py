"""Batch scoring with registered models on Ray Data: `raymaas predict`, `python -m jobs.predict`.

    job.py      PredictSpec (the spec) and run_predict: plan, connect, one MLflow run, score, end
    plan.py     what is decided before Ray starts: the model version, the input files (the units
                of resumption), each checked against the model's signature, the output folder
    scorer.py   BatchScorer, the Ray Data actor that holds one model: batch in, predictions and
                rejected rows out
    output.py   the output and errors folders: one part file per input file, written atomically
    sample.py   the held-out digits as a file (the demo's batch stage, jobs/specs/predict_digits.yaml)

Nothing is imported here: Ray imports raymaas.batch.scorer in every model actor.
"""
