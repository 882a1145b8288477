// Package idempotency makes uploads safe to retry: the Idempotency-Key
// request header (IETF draft "The Idempotency-Key HTTP Header Field") names
// one upload of one user, and the first response to it is kept for TTL.
//
// The contract of a keyed submission (Submitter), which both deployment
// shapes pass through idempotencytest.TestSubmitter:
//   - A key is scoped to its user: another user's same key is another key.
//   - The first submission under a live key creates the assets and keeps
//     the claim's fingerprint and response with them; a later one with the
//     same fingerprint creates nothing and gets that response (a replay);
//     one with another fingerprint creates nothing and gets ErrReused.
//   - While a submission of the key is running, another with the same
//     fingerprint gets ErrInFlight (the draft's 409) and creates nothing.
//   - A submission that fails keeps nothing under the key: the client may
//     retry the key.
//   - A key is live until its record's ExpiresAt; after it, the key is free.
//
// A key is claimed once the request's body has been read and its files
// stored, not when the request starts: the fingerprint needs the whole body,
// a phone's body may take minutes (a claim held that long would need a
// renewed lease), and a request refused while its body is read never
// touches its key. Two duplicates sent at once therefore both upload; the
// one that claims second creates nothing and its files are deleted. A
// duplicate that finds the key claimed gets ErrInFlight at once rather
// than waiting for the first request's answer (the draft's 409; waiting
// would tie up a connection for as long as the first request runs).
package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// TTL is how long a key's record is kept (and replayed).
const TTL = 24 * time.Hour

// MaxKeyLen bounds a key, in bytes.
const MaxKeyLen = 255

// Header is the request header field.
const Header = "Idempotency-Key"

var (
	// ErrInFlight: another submission of the key, with the same
	// fingerprint, has not finished.
	ErrInFlight = errors.New("idempotency: a request with this key is in flight")
	// ErrReused: the key was (or is being) used with another request.
	ErrReused = errors.New("idempotency: key reused with another request")
	// ErrInvalidKey: the header is not a key this service accepts.
	ErrInvalidKey = errors.New("idempotency: invalid key")
)

// Claim is what a keyed submission asks to keep under its key.
type Claim struct {
	UserID      string
	Key         string
	Fingerprint string    // see Fingerprint
	Response    []byte    // the 202 body, replayed as is
	At          time.Time // the request's time: a record is live while ExpiresAt > At
}

// ExpiresAt is when the record of c expires.
func (c Claim) ExpiresAt() time.Time { return c.At.Add(TTL) }

// Record is a completed submission's record.
type Record struct {
	UserID      string
	Key         string
	Fingerprint string
	Response    []byte
	ExpiresAt   time.Time
}

// Submitter is a keyed intake (see the package doc). SubmitOnce returns
// (nil, nil) when it created the assets now, and the first submission's
// record (nil error) when this one is its replay; ErrReused, ErrInFlight,
// or the intake's error otherwise, having created nothing.
type Submitter interface {
	SubmitOnce(ctx context.Context, assets []*asset.Asset, c Claim) (*Record, error)
}

// Check decides a new claim against an existing record of its key: nil
// for a replay, ErrReused for another request.
func Check(r *Record, c Claim) error {
	if r.Fingerprint != c.Fingerprint {
		return ErrReused
	}
	return nil
}

// File is what the fingerprint covers of one uploaded file.
type File struct {
	Name   string // the cleaned file name, as the response carries it
	Size   int64
	SHA256 string // hex, computed while the file streamed in
}

// Fingerprint is SHA-256 over what decides the response: the user and each
// file's name, size and SHA-256, in order, every field length-prefixed.
func Fingerprint(userID string, files []File) string {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field("klectr-upload-v1")
	field(userID)
	for _, f := range files {
		field(f.Name)
		field(fmt.Sprint(f.Size))
		field(f.SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ParseKey reads the Idempotency-Key field value. The draft makes it an
// RFC 8941 sf-string (`"…"`, with \" and \\ escapes, printable ASCII and
// space inside); a bare value of visible ASCII other than `"`, `\`, `,`
// and `;` is accepted too, as many clients send one. Either way the key is
// the unquoted text: `"abc"` and `abc` are the same key. It is 1 to
// MaxKeyLen bytes.
func ParseKey(v string) (string, error) {
	v = strings.Trim(v, " \t")
	var key string
	if strings.HasPrefix(v, `"`) {
		var b strings.Builder
		closed := false
		for i := 1; i < len(v); i++ {
			c := v[i]
			switch {
			case closed:
				return "", fmt.Errorf("%w: text after the closing quote", ErrInvalidKey)
			case c == '\\':
				i++
				if i == len(v) || (v[i] != '"' && v[i] != '\\') {
					return "", fmt.Errorf(`%w: only \" and \\ may be escaped`, ErrInvalidKey)
				}
				b.WriteByte(v[i])
			case c == '"':
				closed = true
			case c < 0x20 || c > 0x7e:
				return "", fmt.Errorf("%w: only printable ASCII is allowed", ErrInvalidKey)
			default:
				b.WriteByte(c)
			}
		}
		if !closed {
			return "", fmt.Errorf("%w: no closing quote", ErrInvalidKey)
		}
		key = b.String()
	} else {
		for i := 0; i < len(v); i++ {
			if c := v[i]; c <= 0x20 || c > 0x7e || c == '"' || c == '\\' || c == ',' || c == ';' {
				return "", fmt.Errorf("%w: an unquoted key is visible ASCII without %s; quote it", ErrInvalidKey, `" \ , ;`)
			}
		}
		key = v
	}
	if key == "" || len(key) > MaxKeyLen {
		return "", fmt.Errorf("%w: it must be 1 to %d characters", ErrInvalidKey, MaxKeyLen)
	}
	return key, nil
}

// LogID stands for a key in logs: a short hash, so that lines about one
// key can be matched without the key itself being written down.
func LogID(userID, key string) string {
	s := sha256.Sum256([]byte(userID + "\x00" + key))
	return hex.EncodeToString(s[:6])
}

// Entry is a key's record as an intake without one transaction keeps it
// (splitintake): reserved before the assets are written, with the response
// they will get and their ids, then marked done.
type Entry struct {
	Record
	Done       bool
	Token      string    // the reserving request's; guards Complete and Release
	LeaseUntil time.Time // a pending entry past it belongs to a request that died
	AssetIDs   []string
}
