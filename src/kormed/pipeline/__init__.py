"""`kormed run` / `kormed demo` / `kormed report`: the whole pipeline from one YAML file, in one run directory.

- `registry`: the one list of stages (name, config section, directory, title, inputs, final artefact);
- `spec`: the parsed pipeline file, the run context and StageSpec (how the runner drives a stage);
- `stages`: the real stages' wiring, each a call into that stage's own API;
- `results`: each stage's typed result, written as `<stage dir>/kormed_result.json`;
- `run`: the runner (state.json, skip what is current, --from, resume, launcher);
- `rundir`: what a run directory holds (each stage's result, its training runs and curves), read by `report` and the
  model cards;
- `report`: report.html / report.md from a run directory; `commands`: the CLI front.

This package module imports none of them, so that `kormed --help` loads no stage code.
"""
