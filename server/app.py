"""fedpriv ServerApp: FedAvg over the sites for R rounds, progress per round, results folder."""

from __future__ import annotations

import time
from logging import WARNING

from flwr.app import ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common.config import RunSettings
from server.run import FederatedRun
from server.strategy import RunStopped

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` of FedAvg; write metrics, the final model and a summary."""
    settings = RunSettings.from_run_config(context.run_config)
    run_name = settings.run_name or time.strftime("%Y%m%d-%H%M%S") + f"-{context.run_id}"
    with FederatedRun(settings, run_name, context.run_id) as run:
        start = run.start_weights()
        if run.remaining_rounds <= 0:  # resumed after the last round's checkpoint
            run.final_evaluation(grid, start)
            run.finish(start)
            return
        try:
            result = run.flower_strategy.start(
                grid=grid,
                initial_arrays=start,
                num_rounds=run.remaining_rounds,
                timeout=settings.round_timeout,
                train_config=ConfigRecord(run.requested_training()),
                evaluate_fn=run.end_of_round,
            )
        except RunStopped as stop:
            log(WARNING, "Run stopped early: %s", stop)
            run.final_evaluation(grid, run.latest_arrays)
            run.finish(run.latest_arrays, stopped_early=str(stop))
        else:
            run.final_evaluation(grid, result.arrays)
            run.finish(result.arrays)
