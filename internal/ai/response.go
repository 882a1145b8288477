package ai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxResultDepth bounds how deeply objects and arrays nest in a result (the
// top-level object is depth 1). Stores and clients have nesting limits of
// their own (SQLite's json_valid refuses 1,000); a result must pass all of
// them.
const MaxResultDepth = 32

// ParseResponse validates the body of an analysis result and returns it
// re-encoded, compact and canonical: what a store keeps is exactly what was
// validated. A result is accepted only if it is
//
//   - one JSON object and nothing after it, at most MaxResultBytes long
//     before and after re-encoding;
//   - valid UTF-8 throughout, with no NUL character in any key or string
//     (an escaped lone surrogate decodes to U+FFFD, as Go's decoder does);
//   - nested at most MaxResultDepth deep;
//   - free of repeated keys within an object (decoders disagree on which
//     one wins) and of numbers outside float64's range;
//   - not an error envelope: a top-level "error" or "errors" member whose
//     value is not null, false, "", [] or {}; a top-level "status" of
//     "error", "failed" or "failure" (any case); or a top-level
//     "success": false. A service that answers 200 with such a body failed.
//
// Key order, number text and string contents are kept; whitespace is
// dropped and strings are re-escaped by encoding/json's rules without HTML
// escaping. Every failure is a permanent *Error with code ai_bad_response
// (ai_response_too_large for size), whose message is safe to show users.
func ParseResponse(body []byte) (json.RawMessage, error) {
	return parseResponse(body, "")
}

// parseResponse is ParseResponse, redacting token from the snippets of the
// body that its messages quote.
func parseResponse(body []byte, token string) (json.RawMessage, error) {
	tooLarge := &Error{
		Code:      CodeResponseTooLarge,
		Permanent: true,
		Message:   fmt.Sprintf("AI service result is larger than the %d KiB limit", MaxResultBytes>>10),
	}
	if len(body) > MaxResultBytes {
		return nil, tooLarge
	}
	bad := func(format string, args ...any) error {
		return &Error{Code: CodeBadResponse, Permanent: true, Message: "AI service result " + fmt.Sprintf(format, args...)}
	}
	if !utf8.Valid(body) {
		return nil, bad("is not valid UTF-8 (%d bytes)", len(body))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	p := &resultParser{dec: dec, token: token}
	p.enc = json.NewEncoder(&p.scratch)
	p.enc.SetEscapeHTML(false)

	invalid := func() error {
		detail := snippet(body, token)
		if detail != "" {
			detail = ": " + detail
		}
		return bad("is not valid JSON (%d bytes)%s", len(body), detail)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, invalid()
	}
	if tok != json.Delim('{') {
		return nil, bad("is a JSON %s; expected an object", tokenKind(tok))
	}
	if err := p.object(1, true); err != nil {
		var perr *parseError
		if errors.As(err, &perr) {
			return nil, bad("%s", perr.msg)
		}
		return nil, invalid()
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("has data after its JSON object")
	}
	if p.failure != "" {
		return nil, bad("is an error report: %s", p.failure)
	}
	if len(p.out) > MaxResultBytes {
		return nil, tooLarge
	}
	return p.out, nil
}

// parseError is a reason to refuse a syntactically valid result.
type parseError struct{ msg string }

func (e *parseError) Error() string { return e.msg }

// resultParser re-encodes the token stream of dec into out, checking it as
// it goes. Recursion is bounded by MaxResultDepth.
type resultParser struct {
	dec     *json.Decoder
	enc     *json.Encoder // writes one string at a time into scratch
	scratch bytes.Buffer
	out     []byte
	token   string
	failure string // set when the top level is an error envelope
}

// object re-encodes an object whose '{' was just read.
func (p *resultParser) object(depth int, top bool) error {
	if depth > MaxResultDepth {
		return &parseError{fmt.Sprintf("nests deeper than %d levels", MaxResultDepth)}
	}
	p.out = append(p.out, '{')
	seen := make(map[string]bool)
	for i := 0; ; i++ {
		tok, err := p.dec.Token()
		if err != nil {
			return err
		}
		if tok == json.Delim('}') {
			p.out = append(p.out, '}')
			return nil
		}
		key, ok := tok.(string)
		if !ok {
			return errors.New("object key is not a string") // the decoder refuses this first
		}
		if seen[key] {
			return &parseError{"repeats the key " + quoteSnippet(key, p.token)}
		}
		seen[key] = true
		if i > 0 {
			p.out = append(p.out, ',')
		}
		if err := p.string(key); err != nil {
			return err
		}
		p.out = append(p.out, ':')
		start := len(p.out)
		if err := p.value(depth); err != nil {
			return err
		}
		if top && p.failure == "" {
			p.failure = envelope(key, p.out[start:], p.token)
		}
	}
}

// value re-encodes the next value, inside a container at depth.
func (p *resultParser) value(depth int) error {
	tok, err := p.dec.Token()
	if err != nil {
		return err
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			return p.object(depth+1, false)
		case '[':
			return p.array(depth + 1)
		}
		return fmt.Errorf("unexpected %v", v) // the decoder refuses this first
	case string:
		return p.string(v)
	case json.Number:
		if _, err := strconv.ParseFloat(string(v), 64); err != nil {
			return &parseError{"holds a number out of range: " + snippet([]byte(v), p.token)}
		}
		p.out = append(p.out, v...)
	case bool:
		p.out = strconv.AppendBool(p.out, v)
	case nil:
		p.out = append(p.out, "null"...)
	}
	return nil
}

// array re-encodes an array whose '[' was just read.
func (p *resultParser) array(depth int) error {
	if depth > MaxResultDepth {
		return &parseError{fmt.Sprintf("nests deeper than %d levels", MaxResultDepth)}
	}
	p.out = append(p.out, '[')
	for i := 0; p.dec.More(); i++ {
		if i > 0 {
			p.out = append(p.out, ',')
		}
		if err := p.value(depth); err != nil {
			return err
		}
	}
	if tok, err := p.dec.Token(); err != nil {
		return err
	} else if tok != json.Delim(']') {
		return fmt.Errorf("unexpected %v", tok) // the decoder refuses this first
	}
	p.out = append(p.out, ']')
	return nil
}

func (p *resultParser) string(s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return &parseError{"holds a NUL character"}
	}
	p.scratch.Reset()
	if err := p.enc.Encode(s); err != nil {
		return err
	}
	p.out = append(p.out, bytes.TrimSuffix(p.scratch.Bytes(), []byte("\n"))...)
	return nil
}

// envelope reports, for a top-level member, why it makes the result an
// error report, quoting the member; "" when it does not.
func envelope(key string, value []byte, token string) string {
	v := string(value)
	var failed bool
	switch key {
	case "error", "errors":
		failed = v != "null" && v != "false" && v != `""` && v != "[]" && v != "{}"
	case "status":
		var s string
		failed = json.Unmarshal(value, &s) == nil &&
			(strings.EqualFold(s, "error") || strings.EqualFold(s, "failed") || strings.EqualFold(s, "failure"))
	case "success":
		failed = v == "false"
	}
	if !failed {
		return ""
	}
	return snippet([]byte(strconv.Quote(key)+":"+v), token)
}

// tokenKind names the JSON type of a top-level token.
func tokenKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "array"
		}
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "boolean"
	case nil:
		return "null"
	}
	return "value"
}

func quoteSnippet(s, token string) string {
	const max = 40
	q := snippet([]byte(s), token)
	if len(q) > max {
		q = strings.ToValidUTF8(q[:max], "") + "…"
	}
	return strconv.Quote(q)
}
