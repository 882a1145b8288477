package auth

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte(strings.Repeat("s", 32))

func TestSignVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	k := NewKeys(secret, nil)
	tok, err := k.Sign("u1", RoleAdmin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := k.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.UserID != "u1" || !c.IsAdmin() || time.Until(c.ExpiresAt) < 59*time.Minute {
		t.Fatalf("claims = %+v", c)
	}
}

func TestVerifyRefuses(t *testing.T) {
	t.Parallel()
	k := NewKeys(secret, nil)
	sign := func(m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	future := time.Now().Add(time.Hour).Unix()
	good := sign(jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "exp": future})
	cases := map[string]string{
		"empty":         "",
		"garbage":       "not.a.jwt",
		"alg none":      sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "u1", "exp": future}),
		"HS512":         sign(jwt.SigningMethodHS512, secret, jwt.MapClaims{"sub": "u1", "exp": future}),
		"other secret":  sign(jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), jwt.MapClaims{"sub": "u1", "exp": future}),
		"expired":       sign(jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(-time.Minute).Unix()}),
		"no exp":        sign(jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "u1"}),
		"no sub":        sign(jwt.SigningMethodHS256, secret, jwt.MapClaims{"exp": future}),
		"tampered body": good[:strings.LastIndex(good, ".")-2] + "xx" + good[strings.LastIndex(good, "."):],
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if c, err := k.Verify(tok); err != ErrUnauthorized {
				t.Fatalf("Verify = %+v, %v; want ErrUnauthorized", c, err)
			}
		})
	}
	if _, err := k.Verify(good); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
}

// During a rotation, tokens of the old secret are accepted, new ones are
// signed with the new secret only, and a third secret is still refused.
func TestRotationAcceptsThePreviousSecret(t *testing.T) {
	t.Parallel()
	older := NewKeys(secret, nil)
	oldTok, err := older.Sign("u1", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	k := NewKeys([]byte(strings.Repeat("n", 32)), nil)
	if _, err := k.Verify(oldTok); err != ErrUnauthorized {
		t.Fatalf("old token before AcceptPrevious: %v", err)
	}
	k.AcceptPrevious(secret)
	if c, err := k.Verify(oldTok); err != nil || c.UserID != "u1" {
		t.Fatalf("old token during the rotation: %+v, %v", c, err)
	}
	newTok, err := k.Sign("u2", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := older.Verify(newTok); err != ErrUnauthorized {
		t.Fatalf("a new token verifies with the old secret alone: signed with the previous one? %v", err)
	}
	if c, err := k.Verify(newTok); err != nil || c.UserID != "u2" {
		t.Fatalf("new token: %+v, %v", c, err)
	}
	third, err := NewKeys([]byte(strings.Repeat("x", 32)), nil).Sign("u3", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Verify(third); err != ErrUnauthorized {
		t.Fatalf("a third secret's token: %v", err)
	}
}

func TestMiddleware(t *testing.T) {
	t.Parallel()
	k := NewKeys(secret, nil)
	tok, _ := k.Sign("u7", "", time.Minute)
	h := k.Middleware(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(401) },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, ok := FromContext(r.Context())
			if !ok || c.UserID != "u7" {
				t.Errorf("claims = %+v, %v", c, ok)
			}
			w.WriteHeader(204)
		}))
	for header, want := range map[string]int{"": 401, "Bearer": 401, "Basic " + tok: 401, "Bearer " + tok: 204, "bearer " + tok: 204} {
		r := httptest.NewRequest("GET", "/", nil)
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("Authorization %q: status %d, want %d", header, w.Code, want)
		}
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Concurrent first starts agree on one secret.
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := LoadOrCreateSecret(dir, log)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		}()
	}
	wg.Wait()
	for _, s := range got {
		if string(s) != string(got[0]) || len(s) < 32 {
			t.Fatalf("secrets differ or are short: %q vs %q", s, got[0])
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "jwt-secret"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("data dir holds %d entries, want only the secret", len(entries))
	}
}
