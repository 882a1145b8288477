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
	"sync"
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
	dir    string
	shards [256]dirSync // one per dir/<two hex digits>
}

var _ Store = (*Disk)(nil)

// NewDisk returns a Disk store rooted at dir, creating it, dir/tmp and the
// 256 shard directories if needed and making their entries durable, so that
// a Put has only its shard's new entry to sync.
func NewDisk(dir string) (*Disk, error) {
	d := &Disk{dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o750); err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	for i := range d.shards {
		p := filepath.Join(dir, fmt.Sprintf("%02x", i))
		if err := os.Mkdir(p, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("blob: %w", err)
		}
		d.shards[i].fsync = func() error { return syncDir(p) }
		d.shards[i].cond = sync.NewCond(&d.shards[i].mu)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	return d, nil
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

// copyBufSize is how much Put gathers before each write: a multipart part
// yields a few KiB per Read, and one write per Read cost more than the copy.
const copyBufSize = 64 << 10

var copyBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

// Put copies r into a new blob. The caller bounds r.
//
// The bytes go to dir/tmp/<key> (created exclusively: the key is fresh),
// are fsynced, and the file is renamed into its shard; the shard directory
// is then fsynced, once for every Put whose rename came before that fsync
// began (see dirSync), so concurrent Puts share directory fsyncs.
func (d *Disk) Put(ctx context.Context, r io.Reader) (string, error) {
	key := NewKey()
	final, _ := d.path(key)
	tmp := filepath.Join(d.dir, "tmp", key)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := copyFull(f, ctxReader{ctx, r}); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("blob: %w", err)
	}
	ok = true
	if err := d.shards[shardIndex(key)].sync(); err != nil {
		os.Remove(final)
		return "", fmt.Errorf("blob: %w", err)
	}
	return key, nil
}

// copyFull copies r to w, gathering copyBufSize bytes before each write. It
// returns r's error (not wrapped) other than io.EOF.
func copyFull(w io.Writer, r io.Reader) error {
	buf := copyBufs.Get().(*[copyBufSize]byte)
	defer copyBufs.Put(buf)
	for {
		n := 0
		var err error
		for n < len(buf) && err == nil {
			var m int
			m, err = r.Read(buf[n:])
			n += m
		}
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return fmt.Errorf("blob: %w", werr)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// shardIndex is the number of key's shard, from its first two hex digits.
func shardIndex(key string) int {
	return int(unhex(key[0]))<<4 | int(unhex(key[1]))
}

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
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

// syncDir makes the entries made in dir so far durable.
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
