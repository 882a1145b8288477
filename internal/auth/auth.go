// Package auth signs and verifies the service's JWTs and authenticates HTTP
// requests with them.
//
// Tokens are HS256 with the configured secret. The method is pinned: a token
// signed with any other algorithm — "none" included — is refused, and so is
// one without "exp" or "sub". The user id is "sub"; the optional claim
// "role":"admin" opens the admin API.
package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// RoleAdmin is the role claim that opens the admin API.
const RoleAdmin = "admin"

// ErrUnauthorized is returned for any token that is missing, malformed,
// expired or wrongly signed. Callers never learn which: the reply is the same.
var ErrUnauthorized = errors.New("auth: unauthorized")

// Claims are the parts of a token the service uses.
type Claims struct {
	UserID    string
	Role      string
	ExpiresAt time.Time
}

// IsAdmin reports whether the token carries the admin role.
func (c Claims) IsAdmin() bool { return c.Role == RoleAdmin }

type tokenClaims struct {
	Role string `json:"role,omitempty"`
	jwt.RegisteredClaims
}

// Keys signs tokens with one HS256 secret and verifies them with that secret
// or, while a rotation is under way, with the previous one (AcceptPrevious).
type Keys struct {
	secret []byte
	verify jwt.VerificationKeySet
	now    func() time.Time
	parser *jwt.Parser
}

// NewKeys returns Keys for secret. now may be nil (time.Now).
func NewKeys(secret []byte, now func() time.Time) *Keys {
	if now == nil {
		now = time.Now
	}
	return &Keys{
		secret: secret,
		verify: jwt.VerificationKeySet{Keys: []jwt.VerificationKey{secret}},
		now:    now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(),
			jwt.WithTimeFunc(now),
			jwt.WithLeeway(5*time.Second),
		),
	}
}

// AcceptPrevious makes Verify also accept tokens signed with previous, the
// secret being rotated out, so that phones holding tokens minted before the
// rotation keep working until those tokens expire. Sign never uses it.
// It must be called before k is shared.
func (k *Keys) AcceptPrevious(previous []byte) {
	k.verify.Keys = append(k.verify.Keys, previous)
}

// Sign mints a token for userID valid for ttl.
func (k *Keys) Sign(userID, role string, ttl time.Duration) (string, error) {
	if userID == "" {
		return "", errors.New("auth: empty user id")
	}
	now := k.now()
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, tokenClaims{
		Role: role,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   userID,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	})
	return t.SignedString(k.secret)
}

// Verify checks a token's signature, algorithm and expiry. The signature is
// compared in constant time by the jwt library (hmac.Equal), against the
// current secret and then the previous one, if any.
func (k *Keys) Verify(token string) (Claims, error) {
	var c tokenClaims
	_, err := k.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return k.verify, nil })
	if err != nil || c.Subject == "" || c.ExpiresAt == nil {
		return Claims{}, ErrUnauthorized
	}
	return Claims{UserID: c.Subject, Role: c.Role, ExpiresAt: c.ExpiresAt.Time}, nil
}

// BearerToken returns the token of an "Authorization: Bearer <token>" header.
func BearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

type ctxKey struct{}

// WithClaims returns ctx carrying the request's verified claims.
func WithClaims(ctx context.Context, c Claims) context.Context {
	return context.WithValue(ctx, ctxKey{}, c)
}

// FromContext returns the claims that Middleware verified.
func FromContext(ctx context.Context) (Claims, bool) {
	c, ok := ctx.Value(ctxKey{}).(Claims)
	return c, ok
}

// Middleware authenticates every request with its bearer token; a request
// without a valid one gets reject's reply and never reaches next.
func (k *Keys) Middleware(reject http.HandlerFunc, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := BearerToken(r.Header.Get("Authorization"))
		if !ok {
			reject(w, r)
			return
		}
		c, err := k.Verify(token)
		if err != nil {
			reject(w, r)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithClaims(r.Context(), c)))
	})
}

// secretFile is where the embedded default keeps its generated secret.
const secretFile = "jwt-secret"

// LoadOrCreateSecret returns the secret stored in dataDir, creating a random
// one (mode 0600) on first use. It is for the embedded default only: every
// process of a scaled-out deployment must be given the same JWT_SECRET.
func LoadOrCreateSecret(dataDir string, log *slog.Logger) ([]byte, error) {
	path := filepath.Join(dataDir, secretFile)
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < 32 {
			return nil, fmt.Errorf("auth: %s holds fewer than 32 bytes; delete it to generate a new secret", path)
		}
		log.Warn("JWT_SECRET is not set; using the secret generated earlier in the data directory", "path", path)
		return []byte(s), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("auth: read %s: %w", path, err)
	}
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return nil, fmt.Errorf("auth: create %s: %w", dataDir, err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	s := hex.EncodeToString(raw)
	// Write a temporary file, then link it into place: the secret appears
	// whole or not at all, and a concurrent first start uses the winner's.
	tmp, err := os.CreateTemp(dataDir, secretFile+".*")
	if err != nil {
		return nil, fmt.Errorf("auth: create secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(s + "\n"); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("auth: write secret: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("auth: write secret: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, os.ErrExist) {
		return LoadOrCreateSecret(dataDir, log)
	} else if err != nil {
		return nil, fmt.Errorf("auth: create %s: %w", path, err)
	}
	log.Warn("JWT_SECRET is not set; generated a secret into the data directory (set JWT_SECRET in production)", "path", path)
	return []byte(s), nil
}
