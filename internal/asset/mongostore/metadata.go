package mongostore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// maxMetadataDepth bounds how deeply AI metadata nests. MongoDB refuses a
// document nested more than 100 levels; the asset document is one of them.
const maxMetadataDepth = 90

// errNoDecimal: the server stores no decimal128 (FerretDB closes the
// connection on one), so an integer beyond int64 cannot be kept exactly.
var errNoDecimal = errors.New("the server has no decimal128 type for an integer beyond int64")

// metadataToBSON converts AI metadata (JSON) into the BSON value stored in
// aiMetadata, keeping what a JSON reader sees: key order, strings, and
// numbers with their precision and kind. Integers that fit int64 become
// int32 or int64; larger ones decimal128 (exact, when decimal is true);
// numbers with a fraction or exponent become doubles, as any JSON reader
// reads them. Object keys are escaped (escapeKey). A duplicated key keeps
// its first position and its last value, as JSON.parse does. Empty
// metadata is null.
func metadataToBSON(raw json.RawMessage, decimal bool) (bson.RawValue, error) {
	if len(raw) == 0 {
		return bson.RawValue{Type: bson.TypeNull}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := readJSON(dec, 0, decimal)
	if err != nil {
		return bson.RawValue{}, fmt.Errorf("aiMetadata: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return bson.RawValue{}, errors.New("aiMetadata: data after the JSON value")
	}
	t, b, err := bson.MarshalValue(v)
	if err != nil {
		return bson.RawValue{}, fmt.Errorf("aiMetadata: %w", err)
	}
	return bson.RawValue{Type: t, Value: b}, nil
}

func readJSON(dec *json.Decoder, depth int, decimal bool) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok := tok.(type) {
	case json.Delim:
		if depth >= maxMetadataDepth {
			return nil, fmt.Errorf("nested more than %d levels", maxMetadataDepth)
		}
		if tok == '[' {
			a := bson.A{}
			for dec.More() {
				v, err := readJSON(dec, depth+1, decimal)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token()
			return a, err
		}
		d := bson.D{}
		at := map[string]int{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			v, err := readJSON(dec, depth+1, decimal)
			if err != nil {
				return nil, err
			}
			key := escapeKey(k.(string))
			if i, ok := at[key]; ok {
				d[i].Value = v
				continue
			}
			at[key] = len(d)
			d = append(d, bson.E{Key: key, Value: v})
		}
		_, err := dec.Token()
		return d, err
	case json.Number:
		return number(string(tok), decimal)
	default: // string, bool, nil
		return tok, nil
	}
}

func number(s string, decimal bool) (any, error) {
	if !strings.ContainsAny(s, ".eE") {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			if n >= math.MinInt32 && n <= math.MaxInt32 {
				return int32(n), nil
			}
			return n, nil
		}
		if !decimal {
			return nil, fmt.Errorf("integer %s: %w", s, errNoDecimal)
		}
		d, err := bson.ParseDecimal128(s)
		if err != nil {
			return nil, fmt.Errorf("integer %s does not fit a decimal128 exactly", s)
		}
		return d, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("number %s is out of a double's range", s)
	}
	return f, nil
}

// metadataToJSON is the inverse of metadataToBSON: null gives nil, doubles
// keep a fraction or exponent so they stay floats, keys are unescaped.
func metadataToJSON(v bson.RawValue) (json.RawMessage, error) {
	if v.Type == 0 || v.Type == bson.TypeNull {
		return nil, nil
	}
	var b bytes.Buffer
	if err := writeJSON(&b, v); err != nil {
		return nil, fmt.Errorf("aiMetadata: %w", err)
	}
	return b.Bytes(), nil
}

func writeJSON(b *bytes.Buffer, v bson.RawValue) error {
	switch v.Type {
	case bson.TypeNull:
		b.WriteString("null")
	case bson.TypeBoolean:
		b.WriteString(strconv.FormatBool(v.Boolean()))
	case bson.TypeString:
		writeString(b, v.StringValue())
	case bson.TypeInt32:
		b.WriteString(strconv.FormatInt(int64(v.Int32()), 10))
	case bson.TypeInt64:
		b.WriteString(strconv.FormatInt(v.Int64(), 10))
	case bson.TypeDouble:
		f := v.Double()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("double %v has no JSON form", f)
		}
		b.Write(formatDouble(f))
	case bson.TypeDecimal128:
		d := v.Decimal128()
		bi, exp, err := d.BigInt()
		if err != nil {
			return fmt.Errorf("decimal128 %s has no JSON form", d)
		}
		if exp >= 0 { // an integer: write every digit, so it reads back as one
			bi.Mul(bi, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(exp)), nil))
			b.WriteString(bi.String())
		} else {
			b.WriteString(d.String())
		}
	case bson.TypeArray:
		vals, err := v.Array().Values()
		if err != nil {
			return err
		}
		b.WriteByte('[')
		for i, e := range vals {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writeJSON(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case bson.TypeEmbeddedDocument:
		elems, err := v.Document().Elements()
		if err != nil {
			return err
		}
		b.WriteByte('{')
		for i, e := range elems {
			if i > 0 {
				b.WriteByte(',')
			}
			k, err := unescapeKey(e.Key())
			if err != nil {
				return err
			}
			writeString(b, k)
			b.WriteByte(':')
			if err := writeJSON(b, e.Value()); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("BSON type %s has no JSON form", v.Type)
	}
	return nil
}

// writeString writes s as a JSON string without escaping HTML characters.
func writeString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)           // a string always encodes
	b.Truncate(b.Len() - 1) // Encode's newline
}

// formatDouble writes f as encoding/json does, plus ".0" when that has
// neither a fraction nor an exponent, so that it reads back as a double.
func formatDouble(f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b := strconv.AppendFloat(nil, f, format, -1, 64)
	if format == 'e' { // e-07 → e-7
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	if !bytes.ContainsAny(b, ".e") {
		b = append(b, ".0"...)
	}
	return b
}

// escapeKey makes a JSON object key storable: MongoDB refuses a '.'
// anywhere and a leading '$' (FerretDB at any depth), and BSON cannot hold
// a NUL. They become %2E, %24 and %00; '%' itself becomes %25, so every '%'
// in a stored key starts an escape and unescapeKey restores the key exactly.
// Other keys, the usual case, are stored as they are.
func escapeKey(k string) string {
	if !strings.ContainsAny(k, "%.\x00") && !strings.HasPrefix(k, "$") {
		return k
	}
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		switch c := k[i]; {
		case c == '%', c == '.', c == 0, c == '$' && i == 0:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func unescapeKey(k string) (string, error) {
	if !strings.Contains(k, "%") {
		return k, nil
	}
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] != '%' {
			b.WriteByte(k[i])
			continue
		}
		if i+2 >= len(k) {
			return "", fmt.Errorf("key %q: truncated escape", k)
		}
		switch k[i+1 : i+3] {
		case "25":
			b.WriteByte('%')
		case "2E":
			b.WriteByte('.')
		case "24":
			b.WriteByte('$')
		case "00":
			b.WriteByte(0)
		default:
			return "", fmt.Errorf("key %q: unknown escape %q", k, k[i:i+3])
		}
		i += 2
	}
	return b.String(), nil
}
