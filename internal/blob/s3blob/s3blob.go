// Package s3blob is the blob.Store of the scale-out deployment: blobs are
// objects in an S3-compatible bucket, so every api and worker process reads
// what any of them stored.
//
// Objects are named <prefix><key>, key from blob.NewKey. Put streams with
// the SDK's multipart uploader in 5 MiB parts, one part in flight while the
// next is read: an upload holds at most three part buffers (15 MiB live,
// measured) whatever its size, two once past its first part, and a blob under
// 5 MiB is one PutObject from one buffer of its size. Put returns after S3
// acknowledged the object, which S3 stores durably. A failed Put aborts its
// multipart upload; one interrupted by a crash is aborted by RemoveTemp
// (blob.Sweep) — on AWS a bucket lifecycle rule
// AbortIncompleteMultipartUpload does the same.
package s3blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/klectr/klectr/internal/blob"
)

// partSize is S3's smallest multipart part; see the package doc for the
// memory it implies.
const partSize = manager.MinUploadPartSize

// deleteBatch is S3's limit of keys per DeleteObjects.
const deleteBatch = 1000

// pingTimeout bounds New's and Ping's check of the bucket.
const pingTimeout = 10 * time.Second

// Config locates the bucket. Credentials come from the AWS default chain
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
// shared config files, instance and task roles) unless AccessKeyID is set.
type Config struct {
	Bucket string
	// Prefix is prepended to every object name; empty or ending in "/".
	Prefix string
	// Endpoint is the base URL of an S3-compatible server (MinIO, Ceph,
	// R2, …); empty means AWS. When set, requests are path-style.
	Endpoint string
	// Region defaults to AWS_REGION / the shared config, and to us-east-1
	// when Endpoint is set.
	Region string
	// AccessKeyID and SecretAccessKey, when set, replace the default chain.
	AccessKeyID, SecretAccessKey string
}

// bucketName is S3's rule for bucket names (3–63 lowercase letters, digits,
// dots and hyphens, starting and ending with a letter or digit).
var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// ParseURL reads BLOB_URL's s3 form,
// s3://bucket[/prefix][?endpoint=http://host:port&region=us-east-1].
// Credentials never go in the URL.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("s3 blob URL: %w", err)
	}
	if u.Scheme != "s3" {
		return Config{}, fmt.Errorf("s3 blob URL %q: the scheme must be s3://", raw)
	}
	if u.User != nil {
		return Config{}, errors.New("s3 blob URL: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	if u.Opaque != "" || !bucketName.MatchString(u.Host) {
		return Config{}, fmt.Errorf("s3 blob URL %q: want s3://<bucket>/<prefix>, with a bucket name of 3–63 lowercase letters, digits, dots and hyphens", raw)
	}
	c := Config{Bucket: u.Host}
	if p := strings.Trim(u.Path, "/"); p != "" {
		for _, seg := range strings.Split(p, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return Config{}, fmt.Errorf("s3 blob URL %q: the prefix %q has an empty, . or .. segment", raw, p)
			}
		}
		c.Prefix = p + "/"
	}
	if u.Fragment != "" {
		return Config{}, fmt.Errorf("s3 blob URL %q: unexpected #fragment", raw)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, fmt.Errorf("s3 blob URL %q: %w", raw, err)
	}
	for name, vals := range q {
		if len(vals) != 1 {
			return Config{}, fmt.Errorf("s3 blob URL %q: parameter %q given %d times", raw, name, len(vals))
		}
		switch v := vals[0]; name {
		case "endpoint":
			e, err := url.Parse(v)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" || e.User != nil || e.RawQuery != "" {
				return Config{}, fmt.Errorf("s3 blob URL: endpoint %q is not an http:// or https:// URL of a host", v)
			}
			c.Endpoint = v
		case "region":
			if v == "" {
				return Config{}, errors.New("s3 blob URL: region is empty")
			}
			c.Region = v
		default:
			return Config{}, fmt.Errorf("s3 blob URL %q: unknown parameter %q (known: endpoint, region)", raw, name)
		}
	}
	return c, nil
}

// Store is a blob.Store on an S3 bucket.
type Store struct {
	client   *s3.Client
	uploader *manager.Uploader
	bucket   string
	prefix   string
}

var (
	_ blob.Store       = (*Store)(nil)
	_ blob.TempRemover = (*Store)(nil)
)

// New returns a Store on cfg's bucket, after checking that the bucket
// answers (within a few seconds, or before ctx ends).
func New(ctx context.Context, cfg Config) (*Store, error) {
	if !bucketName.MatchString(cfg.Bucket) {
		return nil, fmt.Errorf("s3blob: invalid bucket name %q", cfg.Bucket)
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("s3blob: prefix %q must end in /", cfg.Prefix)
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3blob: AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		if cfg.Endpoint == "" {
			return nil, errors.New("s3blob: no region: add ?region= to BLOB_URL or set AWS_REGION")
		}
		awsCfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		// Multipart objects carry no whole-object checksum to validate;
		// the SDK would log that at every Open.
		o.DisableLogOutputChecksumValidationSkipped = true
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.UsePathStyle = true
		}
	})
	s := &Store{
		client: client,
		uploader: manager.NewUploader(client, func(u *manager.Uploader) {
			u.PartSize = partSize
			u.Concurrency = 1
			// Put aborts with a context of its own: the caller's may be
			// what ended the upload.
			u.LeavePartsOnError = true
		}),
		bucket: cfg.Bucket,
		prefix: cfg.Prefix,
	}
	if err := s.Ping(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Ping reports whether the bucket exists and the credentials reach it.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); err != nil {
		return fmt.Errorf("s3blob: bucket %q: %w", s.bucket, err)
	}
	return nil
}

func (s *Store) name(key string) *string { return aws.String(s.prefix + key) }

// Put streams r into a new object. The caller bounds r.
func (s *Store) Put(ctx context.Context, r io.Reader) (string, error) {
	key := blob.NewKey()
	_, err := s.uploader.Upload(ctx, &s3.PutObjectInput{
		Bucket:      &s.bucket,
		Key:         s.name(key),
		Body:        r,
		ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		var mf manager.MultiUploadFailure
		if errors.As(err, &mf) {
			s.abort(context.WithoutCancel(ctx), key, mf.UploadID())
		}
		return "", fmt.Errorf("s3blob: put: %w", err)
	}
	return key, nil
}

// abort ends a multipart upload; if it fails, RemoveTemp retries later.
func (s *Store) abort(ctx context.Context, key, uploadID string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: &s.bucket, Key: s.name(key), UploadId: &uploadID,
	})
	return err
}

// Open streams the object's bytes.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if !blob.ValidKey(key) {
		return nil, blob.ErrNotFound
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: s.name(key)})
	if isNotFound(err) {
		return nil, blob.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("s3blob: get: %w", err)
	}
	return out.Body, nil
}

func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var api smithy.APIError
	return errors.As(err, &nsk) || errors.As(err, &nf) ||
		(errors.As(err, &api) && (api.ErrorCode() == "NoSuchKey" || api.ErrorCode() == "NotFound"))
}

// Delete removes objects; missing and invalid keys are ignored.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	var ids []types.ObjectIdentifier
	for _, k := range keys {
		if blob.ValidKey(k) {
			ids = append(ids, types.ObjectIdentifier{Key: s.name(k)})
		}
	}
	var errs []error
	for chunk := range slices.Chunk(ids, deleteBatch) {
		out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: &s.bucket,
			Delete: &types.Delete{Objects: chunk, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return fmt.Errorf("s3blob: delete: %w", err)
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) == "NoSuchKey" {
				continue
			}
			errs = append(errs, fmt.Errorf("s3blob: delete %s: %s: %s", aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message)))
		}
	}
	return errors.Join(errs...)
}

// Walk calls fn for each object under the prefix, named by a valid key,
// last modified before olderThan.
func (s *Store) Walk(ctx context.Context, olderThan time.Time, fn func(key string) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: aws.String(s.prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("s3blob: list: %w", err)
		}
		for _, o := range page.Contents {
			key, ok := strings.CutPrefix(aws.ToString(o.Key), s.prefix)
			if !ok || !blob.ValidKey(key) || o.LastModified == nil || !o.LastModified.Before(olderThan) {
				continue
			}
			if err := fn(key); err != nil {
				return err
			}
		}
	}
	return nil
}

// RemoveTemp aborts the multipart uploads of this store begun before
// olderThan: what a crash in the middle of Put leaves (invisible to Walk,
// but stored and billed).
func (s *Store) RemoveTemp(ctx context.Context, olderThan time.Time) (int, error) {
	p := s3.NewListMultipartUploadsPaginator(s.client, &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: aws.String(s.prefix)})
	n := 0
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return n, fmt.Errorf("s3blob: list multipart uploads: %w", err)
		}
		for _, u := range page.Uploads {
			key, ok := strings.CutPrefix(aws.ToString(u.Key), s.prefix)
			if !ok || !blob.ValidKey(key) || u.Initiated == nil || !u.Initiated.Before(olderThan) {
				continue
			}
			err := s.abort(ctx, key, aws.ToString(u.UploadId))
			switch {
			case err == nil:
				n++
			case !isNoSuchUpload(err): // else finished or aborted meanwhile
				return n, fmt.Errorf("s3blob: abort multipart upload: %w", err)
			}
		}
	}
	return n, nil
}

func isNoSuchUpload(err error) bool {
	var nsu *types.NoSuchUpload
	return errors.As(err, &nsu)
}
