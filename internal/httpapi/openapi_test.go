package httpapi_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	verrors "github.com/pb33f/libopenapi-validator/errors"
)

// contract is api/openapi.yaml as a validator, built once per test binary:
// building it compiles every schema of the document, which is the slow part.
var contract = sync.OnceValues(func() (validator.Validator, error) {
	spec, err := os.ReadFile("../../api/openapi.yaml")
	if err != nil {
		return nil, err
	}
	doc, err := libopenapi.NewDocument(spec)
	if err != nil {
		return nil, fmt.Errorf("parse api/openapi.yaml: %w", err)
	}
	v, errs := validator.NewValidator(doc, config.WithFormatAssertions())
	if len(errs) > 0 {
		return nil, fmt.Errorf("build the validator: %w", errors.Join(errs...))
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		var b strings.Builder
		for _, e := range verrs {
			fmt.Fprintf(&b, "\n  %s: %s", e.Message, e.Reason)
		}
		return nil, fmt.Errorf("api/openapi.yaml is not a valid OpenAPI document:%s", b.String())
	}
	return v, nil
})

// contractErrors validates res (whose body is body) as the answer to req,
// and req itself when withRequest is set. It returns one line per violation.
func contractErrors(t *testing.T, req *http.Request, res *http.Response, body []byte, withRequest bool) []string {
	t.Helper()
	v, err := contract()
	if err != nil {
		t.Fatal(err)
	}
	cp := *res
	cp.Body = io.NopCloser(bytes.NewReader(body))
	var ok bool
	var verrs []*verrors.ValidationError
	if withRequest {
		ok, verrs = v.ValidateHttpRequestResponse(req, &cp)
	} else {
		ok, verrs = v.ValidateHttpResponse(req, &cp)
	}
	if ok {
		return nil
	}
	var out []string
	for _, e := range verrs {
		line := fmt.Sprintf("%s %s → %d: %s: %s", req.Method, req.URL.Path, res.StatusCode, e.Message, e.Reason)
		for _, f := range e.SchemaValidationErrors {
			line += fmt.Sprintf("\n    %s", f.Error())
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprintf("%s %s → %d: refused without a reason", req.Method, req.URL.Path, res.StatusCode))
	}
	return out
}

// checkContract fails t for every way res breaks api/openapi.yaml.
func checkContract(t *testing.T, req *http.Request, res *http.Response, body []byte, withRequest bool) {
	t.Helper()
	for _, e := range contractErrors(t, req, res, body, withRequest) {
		t.Errorf("openapi: %s\n  body: %s", e, truncate(body, 400))
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// TestContractValidatorRefusesWrongBodies proves that checkContract can fail:
// for each reply the handlers must never send, the validator says no.
func TestContractValidatorRefusesWrongBodies(t *testing.T) {
	t.Parallel()
	const id = "01JAAAAAAAAAAAAAAAAAAAAAAA"
	goodAsset := `{"id":"` + id + `","userId":"u1","status":"processing","processingJobId":"` + id + `",` +
		`"filename":"a.jpg","contentType":"image/jpeg","size":10,"sha256":"` + strings.Repeat("a", 64) + `",` +
		`"width":1,"height":1,"aiMetadata":null,"error":null,"attempts":0,` +
		`"createdAt":"2026-01-02T03:04:05.000Z","updatedAt":"2026-01-02T03:04:05.000Z","processedAt":null,` +
		`"receivedAt":"2026-01-02T03:04:04.950Z","enqueuedAt":"2026-01-02T03:04:05.000Z","startedAt":null,` +
		`"analyzedAt":null,"eventSentAt":null}`
	cases := []struct {
		name, method, path string
		status             int
		body               string
		wantOK             bool
	}{
		{"a good 202 (control)", "POST", "/api/assets/analyze-queue", 202,
			`{"assets":[{"assetId":"` + id + `","jobId":"` + id + `","status":"processing","filename":"a.jpg"}]}`, true},
		{"a good asset (control)", "GET", "/api/assets/" + id, 200, goodAsset, true},
		{"a good error (control)", "POST", "/api/assets/analyze-queue", 413,
			`{"error":{"code":"file_too_large","message":"m","field":"images","index":2}}`, true},
		{"an undeclared field in the 202", "POST", "/api/assets/analyze-queue", 202,
			`{"assets":[{"assetId":"` + id + `","jobId":"` + id + `","status":"processing","filename":"a.jpg","blobKey":"k"}]}`, false},
		{"a 202 asset in another status", "POST", "/api/assets/analyze-queue", 202,
			`{"assets":[{"assetId":"` + id + `","jobId":"` + id + `","status":"draft","filename":"a.jpg"}]}`, false},
		{"an id that is not a ULID", "POST", "/api/assets/analyze-queue", 202,
			`{"assets":[{"assetId":"not-a-ulid","jobId":"` + id + `","status":"processing","filename":"a.jpg"}]}`, false},
		{"an undeclared field in an asset", "GET", "/api/assets/" + id, 200,
			strings.TrimSuffix(goodAsset, "}") + `,"blobKey":"0123"}`, false},
		{"an asset without processedAt", "GET", "/api/assets/" + id, 200,
			strings.Replace(goodAsset, `,"processedAt":null`, "", 1), false},
		{"an asset with a bad time", "GET", "/api/assets/" + id, 200,
			strings.Replace(goodAsset, `"createdAt":"2026-01-02T03:04:05.000Z"`, `"createdAt":"yesterday"`, 1), false},
		{"an undeclared error code", "POST", "/api/assets/analyze-queue", 400,
			`{"error":{"code":"oops","message":"m"}}`, false},
		{"an error without message", "POST", "/api/assets/analyze-queue", 400,
			`{"error":{"code":"bad_request"}}`, false},
		{"an error with an undeclared field", "POST", "/api/assets/analyze-queue", 400,
			`{"error":{"code":"bad_request","message":"m","detail":"x"}}`, false},
		{"a negative index", "POST", "/api/assets/analyze-queue", 415,
			`{"error":{"code":"unsupported_media_type","message":"m","field":"images","index":-1}}`, false},
		{"an undeclared status", "POST", "/api/assets/analyze-queue", 418,
			`{"error":{"code":"bad_request","message":"m"}}`, false},
		{"403 where the route has none", "GET", "/api/assets/" + id, 403,
			`{"error":{"code":"forbidden","message":"m"}}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(c.method, "http://localhost:8080"+c.path, nil)
			req.Header.Set("Authorization", "Bearer x")
			res := &http.Response{StatusCode: c.status, Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}}}
			errs := contractErrors(t, req, res, []byte(c.body), false)
			if c.wantOK && len(errs) > 0 {
				t.Errorf("validator refused a good reply: %v", errs)
			}
			if !c.wantOK && len(errs) == 0 {
				t.Errorf("validator accepted a reply the contract forbids: %s", c.body)
			}
		})
	}
}
