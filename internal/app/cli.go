package app

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/klectr/klectr/internal/auth"
	"github.com/klectr/klectr/internal/config"
	"github.com/klectr/klectr/internal/queue"
)

// runToken prints a signed JWT: `klectr token [-role admin] [-ttl 24h] <user>`.
// It uses JWT_SECRET, or the secret the embedded default keeps in DATA_DIR
// (creating it, as the server would).
func runToken(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var role string
	var ttl time.Duration
	cfg, rest, err := config.Load("token", args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&role, "role", "", "role claim, e.g. admin")
		fs.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	})
	if err != nil {
		return err
	}
	if len(rest) != 1 || rest[0] == "" {
		return usageErr("want exactly one user id: klectr token [-role admin] [-ttl 24h] <user>")
	}
	if ttl <= 0 {
		return usageErr("-ttl must be positive")
	}
	secret, err := jwtSecret(cfg, newLogger(cfg, stderr))
	if err != nil {
		return err
	}
	tok, err := auth.NewKeys(secret, nil).Sign(rest[0], role, ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// runJobs is `klectr jobs list|retry|delete`: the admin API's operations on
// the queue, straight on the backends (the server may be running).
func runJobs(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("want a subcommand: list, retry or delete")
	}
	sub, args := args[0], args[1:]
	var state string
	var limit int
	extra := func(fs *flag.FlagSet) {}
	if sub == "list" {
		extra = func(fs *flag.FlagSet) {
			fs.StringVar(&state, "state", string(queue.Dead), "pending, active, retrying, completed or dead")
			fs.IntVar(&limit, "limit", 100, "most jobs to list")
		}
	}
	cfg, rest, err := config.Load("jobs "+sub, args, getenv, stderr, extra)
	if err != nil {
		return err
	}
	// Quiet: the command's output is its result.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	open := func() (*backends, error) { return openBackends(ctx, cfg, log, queueOptions{}) }

	switch sub {
	case "list":
		if !queue.State(state).Valid() || len(rest) != 0 {
			return usageErr("klectr jobs list [-state dead] [-limit 100]")
		}
		b, err := open()
		if err != nil {
			return err
		}
		defer b.Close()
		infos, err := b.queue.List(ctx, queue.State(state), limit)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		for _, info := range infos {
			if err := enc.Encode(jobLine(info)); err != nil {
				return err
			}
		}
		return nil
	case "retry", "delete":
		if len(rest) != 1 {
			return usageErr("klectr jobs %s <job id>", sub)
		}
		b, err := open()
		if err != nil {
			return err
		}
		defer b.Close()
		if sub == "retry" {
			err = b.intake.Replay(ctx, rest[0])
		} else {
			err = b.intake.DeleteJob(ctx, rest[0])
		}
		if err != nil {
			return fmt.Errorf("job %s: %w", rest[0], err)
		}
		fmt.Fprintf(stdout, "job %s: %s\n", rest[0], map[string]string{"retry": "replayed", "delete": "deleted"}[sub])
		return nil
	}
	return usageErr("unknown jobs subcommand %q: want list, retry or delete", sub)
}

// jobLine is one job of `klectr jobs list` (JSON lines).
func jobLine(i queue.Info) map[string]any {
	return map[string]any{
		"id": i.ID, "state": i.State, "attempt": i.Attempt, "maxAttempts": i.MaxAttempts,
		"lastError": i.LastError(), "enqueuedAt": i.EnqueuedAt, "finishedAt": i.FinishedAt,
		"payload": i.Payload,
	}
}
