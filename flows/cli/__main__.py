from flows.cli.main import app

app()
