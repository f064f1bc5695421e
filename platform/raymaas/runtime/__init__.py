"""Running jobs: connecting to Ray (cluster.py), the driver skeleton every kind shares
(driver.py, entrypoint.py), a run's final status (lifecycle.py), `raymaas up`/`down`
(localcluster.py), a job submitted to a cluster's job API (submit.py)."""
