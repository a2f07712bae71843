#!/bin/sh
# Downloads files of one Hugging Face hub repository revision into MODEL_DIR, for the
# hf-download init container. Environment:
#   HF_REPO      repository id, e.g. meta-llama/Llama-3.1-8B-Instruct (required)
#   HF_FILES     space-separated file paths inside the repository (required)
#   MODEL_DIR    destination directory on the model volume (required)
#   HF_REVISION  branch, tag or commit id, where a commit id is reproducible (default main)
#   HF_ENDPOINT  hub address (default https://huggingface.co)
#   HF_TOKEN     access token for gated or private repositories (optional)
#
# Each file is written to a temporary name and renamed when complete, so a server never reads
# a partial file, and pods that download at the same time cannot corrupt each other's files.
# A marker records the repository, revision and file list. When it matches, nothing is fetched.
set -eu

: "${HF_REPO:?HF_REPO is not set: set it to the repository id, e.g. meta-llama/Llama-3.1-8B-Instruct}"
: "${HF_FILES:?HF_FILES is not set: list the files to download, e.g. config.json model.safetensors}"
: "${MODEL_DIR:?MODEL_DIR is not set: set it to the destination directory, e.g. /models/llama}"
revision=${HF_REVISION:-main}
endpoint=${HF_ENDPOINT:-https://huggingface.co}
endpoint=${endpoint%/}

marker="$MODEL_DIR/.hf-download-complete"
wanted="$HF_REPO@$revision: $HF_FILES"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ]; then
  echo "hf-download: $MODEL_DIR already holds $HF_REPO@$revision, nothing to download"
  exit 0
fi

mkdir -p "$MODEL_DIR"
rm -f "$marker"

# The token goes to curl in a header file, so it never appears in a process's arguments.
header_file=""
if [ -n "${HF_TOKEN:-}" ]; then
  header_file=$(mktemp)
  trap 'rm -f "$header_file"' EXIT
  chmod 600 "$header_file"
  printf 'Authorization: Bearer %s\n' "$HF_TOKEN" >"$header_file"
fi

for file in $HF_FILES; do
  case "$file" in
    /* | *..*)
      echo "hf-download: invalid file path '$file' in HF_FILES: use a relative path without '..'" >&2
      exit 1
      ;;
  esac
  target="$MODEL_DIR/$file"
  partial="$target.partial.$(hostname)"
  mkdir -p "$(dirname "$target")"
  url="$endpoint/$HF_REPO/resolve/$revision/$file"
  echo "hf-download: fetching $url"
  # --location follows the hub's redirect to its file storage. curl (7.58 and later) sends the
  # Authorization header to the first host only. The storage URL carries its own signature, so
  # it needs no token.
  if [ -n "$header_file" ]; then
    set -- --header "@$header_file"
  else
    set --
  fi
  if ! curl --fail --silent --show-error --location --retry 5 --retry-delay 10 \
    --connect-timeout 30 "$@" --output "$partial" "$url"; then
    rm -f "$partial"
    echo "hf-download: download of $url failed: check HF_REPO, HF_REVISION, the file name and, for gated repositories, the token in Secret w8a8-hf-token" >&2
    exit 1
  fi
  mv -f "$partial" "$target"
done

printf '%s\n' "$wanted" >"$marker"
echo "hf-download: $HF_REPO@$revision is complete in $MODEL_DIR"
