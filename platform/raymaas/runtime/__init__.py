"""Running jobs: connecting to Ray (cluster.py), the job lifecycle single jobs, sweeps and batch
scoring share (lifecycle.py: connect, the job's run, its final status, Ray shut down), a kind's
job on it (driver.py), entrypoints and exit codes (entrypoint.py), `raymaas up`/`down`
(localcluster.py), a job submitted to a cluster's job API (submit.py)."""
