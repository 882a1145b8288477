package realtime_test

import (
	"testing"

	"github.com/klectr/klectr/internal/realtime"
	"github.com/klectr/klectr/internal/realtime/bustest"
)

func TestLocalBus(t *testing.T) {
	t.Parallel()
	bustest.TestBus(t, func(*testing.T) func() realtime.Bus {
		b := realtime.NewLocalBus()
		return func() realtime.Bus { return b }
	})
}
