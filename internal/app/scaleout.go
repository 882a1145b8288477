package app

import (
	"context"
	"errors"
	"log/slog"

	"github.com/klectr/klectr/internal/config"
)

// openScaleOut is filled in once mongostore and redisqueue are on main.
func (b *backends) openScaleOut(ctx context.Context, cfg *config.Config, log *slog.Logger, qo queueOptions) (store, q, bus func(context.Context) error, err error) {
	return nil, nil, nil, errors.New("MONGODB_URI and REDIS_URL: the scale-out backends are not in this build yet")
}
