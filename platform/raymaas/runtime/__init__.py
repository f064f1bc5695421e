"""Running jobs: connecting to Ray (cluster.py), the driver skeleton every kind shares
(driver.py, entrypoint.py), a run's final status (lifecycle.py), `raymaas up`/`down`
(localcluster.py)."""
