from mirkit.cli import app

app(prog_name="mirkit")
