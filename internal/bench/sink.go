package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// sinkMaxBody bounds one request the sink reads.
const sinkMaxBody = 64 << 20

// sinkHandler is the bare multipart sink of -baseline: it parses the body
// with MultipartReader, discards every part and answers 202. It is the most
// an HTTP upload endpoint can do on this machine with net/http, which makes
// it the denominator of issue 9's target 1.
func sinkHandler(w http.ResponseWriter, r *http.Request) { sink(w, r, nil) }

// durableSink is the sink of -baseline-dir: it writes every part to a new
// file in dir, fsyncs the file and then dir before the 202, and removes the
// file after it (the disk does not fill up during a long run). It is the
// least a server that keeps what it acknowledges must do per upload on
// this machine, with no database and no queue: the floor under klectr's
// rate that the disk sets.
func durableSink(dir string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var names []string
		defer func() {
			// After the reply has gone out: the removal is not part of
			// what a server must do before its 202.
			http.NewResponseController(w).Flush()
			for _, n := range names {
				os.Remove(n)
			}
		}()
		sink(w, r, func(p io.Reader) error {
			name := filepath.Join(dir, rand.Text())
			f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			names = append(names, name)
			_, err = io.Copy(f, p)
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			d, err := os.Open(dir)
			if err != nil {
				return err
			}
			defer d.Close()
			return d.Sync()
		})
	}
}

// sink parses the multipart body and hands each part to keep (nil:
// discard), then answers 202.
func sink(w http.ResponseWriter, r *http.Request, keep func(io.Reader) error) {
	r.Body = http.MaxBytesReader(w, r.Body, sinkMaxBody)
	mr, err := r.MultipartReader()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err == nil && keep != nil {
			err = keep(p)
		} else if err == nil {
			_, err = io.Copy(io.Discard, p)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"assets":[]}`)
}

// startSink serves h on a free loopback port until stop is called.
func startSink(h http.Handler) (base string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // ends with ErrServerClosed
	}()
	return "http://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
