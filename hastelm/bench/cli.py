"""`hastelm bench` (placeholder command group; the runner lands with the benchmark issue work)."""
import typer

bench_app = typer.Typer(help="Benchmarks.", invoke_without_command=True, no_args_is_help=False)
