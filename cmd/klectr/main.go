// Command klectr is the KLECTR pipeline: upload intake, background AI
// analysis and realtime results in one binary. Run `klectr help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/klectr/klectr/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
