// Package blob keeps uploaded files under keys the server generates; the
// client's file name never becomes a path.
//
// Contract of Store (blobtest.TestStore checks it):
//   - Put streams r into a new blob under a key it generates (NewKey) and
//     returns only after the bytes are durable: a crash after Put returns
//     loses nothing. A blob is visible under its key whole or not at all.
//     A Put that fails (r fails, ctx ends) leaves no blob; a crash in the
//     middle of Put may leave a partial upload or an unreferenced blob,
//     which Sweep removes.
//   - Open of an unknown key, or of anything that is not a key (ValidKey),
//     returns ErrNotFound: a key never becomes a path or another object.
//   - Delete ignores missing and invalid keys.
//   - Walk calls fn with the key of every blob written before olderThan, in
//     no particular order; blobs put or deleted while it runs may or may not
//     be seen, and fn may delete the key it is given. An error from fn or
//     from ctx stops the walk and is returned.
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
	"time"
)

// ErrNotFound is returned by Open for an unknown key.
var ErrNotFound = errors.New("blob: not found")

// Store keeps blobs. See the package doc for the contract.
type Store interface {
	Put(ctx context.Context, r io.Reader) (key string, err error)
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	Delete(ctx context.Context, keys ...string) error
	Walk(ctx context.Context, olderThan time.Time, fn func(key string) error) error
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

// NewKey returns a new blob key: 128 random bits as 32 lowercase hex digits,
// unguessable and collision-free.
func NewKey() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ValidKey reports whether key has the form NewKey returns. Stores treat any
// other key as unknown, so a key from outside never names a path or an
// object outside the store.
func ValidKey(key string) bool {
	return len(key) == 32 && lowerHex(key)
}

func lowerHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (d *Disk) path(key string) (string, error) {
	if !ValidKey(key) {
		return "", ErrNotFound
	}
	return filepath.Join(d.dir, key[:2], key), nil
}

// Put copies r into a new blob. The caller bounds r.
func (d *Disk) Put(ctx context.Context, r io.Reader) (string, error) {
	key := NewKey()
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

// Walk calls fn for each blob whose file was last written before olderThan.
// Files in dir that are not blobs are ignored.
func (d *Disk) Walk(ctx context.Context, olderThan time.Time, fn func(key string) error) error {
	shards, err := os.ReadDir(d.dir)
	if err != nil {
		return fmt.Errorf("blob: %w", err)
	}
	for _, shard := range shards {
		name := shard.Name()
		if !shard.IsDir() || len(name) != 2 || !lowerHex(name) {
			continue
		}
		files, err := os.ReadDir(filepath.Join(d.dir, name))
		if err != nil {
			return fmt.Errorf("blob: %w", err)
		}
		for _, f := range files {
			key := f.Name()
			if !f.Type().IsRegular() || !ValidKey(key) || key[:2] != name {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			info, err := f.Info()
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("blob: %w", err)
			}
			if !info.ModTime().Before(olderThan) {
				continue
			}
			if err := fn(key); err != nil {
				return err
			}
		}
	}
	return nil
}

// RemoveTemp deletes the partial writes in dir/tmp last written before
// olderThan: what a crash in the middle of Put leaves. It returns how many
// it removed.
func (d *Disk) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	tmp := filepath.Join(d.dir, "tmp")
	files, err := os.ReadDir(tmp)
	if err != nil {
		return 0, fmt.Errorf("blob: %w", err)
	}
	n := 0
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		info, err := f.Info()
		if err != nil || f.IsDir() || !info.ModTime().Before(olderThan) {
			continue
		}
		if err := os.Remove(filepath.Join(tmp, f.Name())); err == nil {
			n++
		} else if !errors.Is(err, os.ErrNotExist) {
			return n, fmt.Errorf("blob: %w", err)
		}
	}
	return n, nil
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
