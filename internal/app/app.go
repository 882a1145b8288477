// Package app is the klectr command: its subcommands, the wiring of concrete
// backends (the only package that names them) and the start/stop order.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/klectr/klectr/internal/bench"
	"github.com/klectr/klectr/internal/config"
)

const usage = `klectr — the KLECTR photo analysis pipeline

Usage:
  klectr serve  [flags]            API + realtime + worker in one process (the embedded default)
  klectr api    [flags]            API + realtime only (jobs are enqueued, not worked)
  klectr worker [flags]            worker only
  klectr token  [flags] <user>     print a signed JWT for <user> (-role admin, -ttl 24h)
  klectr jobs list   [-state dead] [-limit 100]
  klectr jobs retry  <job id>      replay a dead job (its asset goes back to processing)
  klectr jobs delete <job id>      delete a job that is not running (its asset, if still
                                   processing under it, fails with job_deleted)
  klectr bench  [flags]            load a running klectr: uploads, Socket.IO events, percentiles (-h)
  klectr help

Every setting is an environment variable and a flag of the same meaning:
`

// Run runs the klectr command with args (without the program name) and
// returns its exit code. ctx ends the long-running subcommands.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		args = []string{"help"}
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "serve", "api", "worker":
		err = runServer(ctx, mode(cmd), rest, getenv, stderr)
	case "token":
		err = runToken(rest, getenv, stdout, stderr)
	case "jobs":
		err = runJobs(ctx, rest, getenv, stdout, stderr)
	case "bench":
		return bench.Main(ctx, rest, getenv, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		config.Usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "klectr: unknown command %q\n\n", cmd)
		fmt.Fprint(stderr, usage)
		config.Usage(stderr)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "klectr %s: %v\n", cmd, err)
		return 2
	}
	fmt.Fprintf(stderr, "klectr %s: %v\n", cmd, err)
	return 1
}

// errUsage marks a command line that is wrong, as opposed to a failure.
var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// newLogger builds the process's logger from LOG_LEVEL and LOG_FORMAT.
func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
