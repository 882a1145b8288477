package mongostore

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// roundTrips are AI metadata in the compact form metadataToJSON writes, so
// each must come back byte for byte: key order, escaped keys, number kinds.
var roundTrips = []string{
	`{}`,
	`[]`,
	`"text"`,
	`{"z":1,"a":2,"m":{"y":[3,{"b":true,"a":null}],"x":"é <&> \"q\" \\ \u0001 日本"}}`,
	`{"a.b":1,"$where":2,"x$":3,"%":4,"%2E":5,"a%24b":6,"":7,".":{"$":{"..":"$"}},"nul\u0000":8}`,
	`{"i32":[0,-1,2147483647,-2147483648],"i64":[2147483648,-2147483649,9007199254740993,9223372036854775807,-9223372036854775808]}`,
	`{"f":[0.25,1.0,0.1,1e+300,5e-324,1e-7,123456789.0,1e+21,-2.5e-9]}`,
}

func TestMetadataRoundTrip(t *testing.T) {
	t.Parallel()
	// FerretDB stores -0.0 as 0.0, MongoDB keeps it: here only.
	for _, in := range append(roundTrips, `-0.0`) {
		v, err := metadataToBSON(json.RawMessage(in), true)
		if err != nil {
			t.Fatalf("metadataToBSON(%s): %v", in, err)
		}
		out, err := metadataToJSON(v)
		if err != nil {
			t.Fatalf("metadataToJSON(%s): %v", in, err)
		}
		if string(out) != in {
			t.Errorf("round trip of\n  %s\ngave\n  %s", in, out)
		}
	}
}

// TestMetadataStoredForm: what other readers of the collection see.
func TestMetadataStoredForm(t *testing.T) {
	t.Parallel()
	v, err := metadataToBSON(json.RawMessage(`{"a.b":{"$x":1},"n":5000000000,"f":2.0,"big":123456789012345678901234567890}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if v.Type != bson.TypeEmbeddedDocument {
		t.Fatalf("stored as BSON type %s, want an embedded document", v.Type)
	}
	doc := v.Document()
	if got := doc.Lookup("a%2Eb", "%24x"); got.Type != bson.TypeInt32 || got.Int32() != 1 {
		t.Errorf(`a.b.$x stored as %s, want int32 1 under the keys "a%%2Eb", "%%24x"`, got)
	}
	if got := doc.Lookup("n"); got.Type != bson.TypeInt64 {
		t.Errorf("5000000000 stored as %s, want int64", got.Type)
	}
	if got := doc.Lookup("f"); got.Type != bson.TypeDouble {
		t.Errorf("2.0 stored as %s, want double", got.Type)
	}
	if got := doc.Lookup("big"); got.Type != bson.TypeDecimal128 || got.Decimal128().String() != "123456789012345678901234567890" {
		t.Errorf("a 30-digit integer stored as %s %s, want that decimal128", got.Type, got)
	}
	out, err := metadataToJSON(v)
	if err != nil || !strings.Contains(string(out), `"big":123456789012345678901234567890}`) {
		t.Errorf("read back as %s, %v", out, err)
	}
}

func TestMetadataRefused(t *testing.T) {
	t.Parallel()
	deep := strings.Repeat("[", maxMetadataDepth+1) + strings.Repeat("]", maxMetadataDepth+1)
	for _, tc := range []struct {
		in      string
		decimal bool
		want    string
	}{
		{`{"a":`, true, "EOF"},
		{`{"a":1} {}`, true, "after the JSON value"},
		{`1e400`, true, "range"},
		{`123456789012345678901234567890123456789`, true, "decimal128"},
		{`[12345678901234567890]`, false, "no decimal128"},
		{deep, true, "nested"},
	} {
		_, err := metadataToBSON(json.RawMessage(tc.in), tc.decimal)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("metadataToBSON(%.40s, decimal %t) = %v, want an error with %q", tc.in, tc.decimal, err, tc.want)
		}
	}
	if _, err := metadataToBSON(json.RawMessage(deep[1:len(deep)-1]), true); err != nil {
		t.Errorf("metadata nested %d levels: %v", maxMetadataDepth, err)
	}
	_, err := metadataToBSON(json.RawMessage(`[12345678901234567890]`), false)
	if !errors.Is(err, errNoDecimal) {
		t.Errorf("a big integer without decimal128 = %v, want errNoDecimal", err)
	}
}

func TestDuplicateKeyKeepsFirstPlaceLastValue(t *testing.T) {
	t.Parallel()
	v, err := metadataToBSON(json.RawMessage(`{"a":1,"b":2,"a":3}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := metadataToJSON(v); string(out) != `{"a":3,"b":2}` {
		t.Errorf("got %s, want {\"a\":3,\"b\":2} (as JSON.parse reads it)", out)
	}
}

func TestUnescapeKeyRefusesUnknownEscapes(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"%", "%2", "a%41", "%2e"} {
		if got, err := unescapeKey(k); err == nil {
			t.Errorf("unescapeKey(%q) = %q, want an error", k, got)
		}
	}
}
