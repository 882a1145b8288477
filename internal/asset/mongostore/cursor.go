package mongostore

import (
	"encoding/base64"
	"encoding/binary"

	"github.com/klectr/klectr/internal/asset"
)

// cursorVersion leads every cursor, so its layout can change without
// misreading cursors that clients still hold.
const cursorVersion = 1

// encodeCursor makes the opaque List cursor of the last asset of a page:
// base64url of version, createdAt in unix milliseconds (big-endian), id.
func encodeCursor(createdAtMS int64, id string) string {
	b := make([]byte, 0, 9+len(id))
	b = append(b, cursorVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(createdAtMS))
	b = append(b, id...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (createdAtMS int64, id string, err error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 10 || b[0] != cursorVersion {
		return 0, "", asset.ErrInvalidCursor
	}
	return int64(binary.BigEndian.Uint64(b[1:9])), string(b[9:]), nil
}
