package mongostore

import (
	"context"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/asset/assettest"
	"github.com/klectr/klectr/internal/testenv"
)

// newStore connects to the test server with a database of t's own.
func newStore(tb testing.TB) *Store {
	tb.Helper()
	uri, db := testenv.MongoURI(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := New(ctx, Config{URI: uri, Database: db})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// capabilities are the server's, as New found them: FerretDB's guarded
// updates race, MongoDB's do not.
func (s *Store) capabilities() assettest.Capabilities {
	if s.server.ferretDB != "" {
		return assettest.Capabilities{Server: "FerretDB " + s.server.ferretDB}
	}
	return assettest.Every
}

func TestStore(t *testing.T) {
	t.Parallel()
	assettest.TestStoreWith(t, func(t *testing.T) (asset.Store, assettest.Capabilities) {
		s := newStore(t)
		return s, s.capabilities()
	})
}
