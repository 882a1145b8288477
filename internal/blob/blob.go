// Package blob keeps uploaded files under keys the server generates; the
// client's file name never becomes a path.
//
// Contract of Store: Put returns only after the bytes are durable (a crash
// after Put returns loses nothing) and a blob is visible under its key whole
// or not at all; Open of an unknown key returns ErrNotFound; Delete ignores
// missing keys.
package blob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrNotFound is returned by Open for an unknown key.
var ErrNotFound = errors.New("blob: not found")

// Store keeps blobs. See the package doc for the contract.
type Store interface {
	Put(ctx context.Context, r io.Reader) (key string, err error)
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	Delete(ctx context.Context, keys ...string) error
}

// Disk is a Store on a local (or shared) directory. Blobs live at
// dir/<first two hex digits>/<key>; partial writes live in dir/tmp.
type Disk struct {
	dir string
}

var _ Store = (*Disk)(nil)

// NewDisk returns a Disk store rooted at dir, creating it if needed.
func NewDisk(dir string) (*Disk, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o750); err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	return &Disk{dir: dir}, nil
}

// newKey returns 128 random bits as hex: unguessable and collision-free.
func newKey() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (d *Disk) path(key string) (string, error) {
	if len(key) != 32 {
		return "", ErrNotFound
	}
	if _, err := hex.DecodeString(key); err != nil {
		return "", ErrNotFound
	}
	return filepath.Join(d.dir, key[:2], key), nil
}

// Put copies r into a new blob. The caller bounds r.
func (d *Disk) Put(ctx context.Context, r io.Reader) (string, error) {
	key := newKey()
	final, _ := d.path(key)
	tmp, err := os.CreateTemp(filepath.Join(d.dir, "tmp"), key+".*")
	if err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, ctxReader{ctx, r}); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	ok = true
	if err := syncDir(filepath.Dir(final)); err != nil {
		os.Remove(final)
		return "", fmt.Errorf("blob: %w", err)
	}
	return key, nil
}

// Open returns the blob's bytes. The reader is also an io.ReaderAt and
// io.Seeker (an *os.File).
func (d *Disk) Open(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	return f, nil
}

// Delete removes blobs; missing keys are ignored.
func (d *Disk) Delete(_ context.Context, keys ...string) error {
	var errs []error
	for _, k := range keys {
		p, err := d.path(k)
		if err != nil {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("blob: %w", err))
		}
	}
	return errors.Join(errs...)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
