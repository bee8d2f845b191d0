"""`python -m flows.stamp`: the command of stage `code` in dvc.yaml, which states once the code
every stage runs. It writes `data/code.json`, the stamp every other stage depends on
(`tasks.core.dvcfile`)."""

from tasks.core.dvcfile import write_stamp

if __name__ == "__main__":
    write_stamp()
