//! GraphiQL served by the binary itself: every asset is embedded, so the IDE
//! works offline and never loads anything from a CDN.
//!
//! Assets and their licences: `assets/graphiql/LICENSES.md`.

use axum::{
    Router,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// An embedded file served at `/graphiql/{name}`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "graphiql.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/graphiql/graphiql.min.css"),
    },
    Asset {
        name: "react.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    },
    // Served so that the MIT/OFL notices travel with the code we hand out.
    Asset {
        name: "LICENSES.md",
        content_type: "text/markdown; charset=utf-8",
        bytes: include_bytes!("../../assets/graphiql/LICENSES.md"),
    },
];

/// The page. Asset URLs carry `?v=` because assets are cached as immutable:
/// bump it whenever a file in assets/graphiql changes.
///
/// The stock fetcher already sends the header editor's headers with every
/// HTTP request and, for subscriptions, opens a graphql-ws client
/// (`graphql-transport-ws`) whose `connection_init` payload is those same
/// headers. The wrapper only drops a bare `Authorization: Bearer` so the
/// prefilled placeholder does not count as a (bad) token.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>todoql — GraphiQL</title>
<link rel="stylesheet" href="/graphiql/graphiql.min.css?v=3.8.3">
<style>html, body, #graphiql { height: 100%; margin: 0; overflow: hidden; }</style>
</head>
<body>
<div id="graphiql">Loading…</div>
<script src="/graphiql/react.production.min.js?v=3.8.3"></script>
<script src="/graphiql/react-dom.production.min.js?v=3.8.3"></script>
<script src="/graphiql/graphiql.min.js?v=3.8.3"></script>
<script>
(function () {
  var wsUrl = (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/graphql';
  var stock = GraphiQL.createFetcher({ url: '/graphql', subscriptionUrl: wsUrl });

  function dropEmptyBearer(headers) {
    if (!headers) return headers;
    var out = {};
    Object.keys(headers).forEach(function (name) {
      var value = String(headers[name]);
      if (name.toLowerCase() === 'authorization' && /^\s*(bearer\s*)?$/i.test(value)) return;
      out[name] = headers[name];
    });
    return out;
  }

  function fetcher(params, opts) {
    return stock(params, Object.assign({}, opts, { headers: dropEmptyBearer(opts && opts.headers) }));
  }

  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultHeaders: '{\n  "Authorization": "Bearer "\n}',
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      defaultEditorToolsVisibility: 'headers'
    })
  );
})();
</script>
</body>
</html>
"#;

/// The GraphiQL HTML page; mount it wherever the IDE should live.
pub fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Always revalidate so a new page (and its new `?v=`) is picked up.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /graphiql/{file}`: the embedded assets the page loads.
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/graphiql/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut res = asset.bytes.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_uri(uri: &str) -> Response {
        let app: Router = Router::new().route("/graphql-page", get(|| async { page() })).merge(assets());
        app.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn body_string(res: Response) -> String {
        let bytes = to_bytes(res.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn page_loads_only_embedded_assets() {
        let res = get_uri("/graphql-page").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let html = body_string(res).await;

        for name in
            ["graphiql.min.css", "react.production.min.js", "react-dom.production.min.js", "graphiql.min.js"]
        {
            assert!(html.contains(&format!("\"/graphiql/{name}?v=")), "page misses {name}");
            assert!(ASSETS.iter().any(|a| a.name == name), "{name} is not embedded");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(html.contains("<title>todoql — GraphiQL</title>"));
        assert!(html.contains(r#""Authorization": "Bearer ""#));
        assert!(html.contains("subscriptionUrl"));
        assert!(html.contains("shouldPersistHeaders: true"));
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type() {
        for asset in ASSETS {
            let res = get_uri(&format!("/graphiql/{}", asset.name)).await;
            assert_eq!(res.status(), StatusCode::OK, "{}", asset.name);
            assert_eq!(res.headers()[header::CONTENT_TYPE], asset.content_type);
            assert_eq!(res.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
            let body = to_bytes(res.into_body(), usize::MAX).await.unwrap();
            assert_eq!(body.len(), asset.bytes.len(), "{}", asset.name);
            assert!(!body.is_empty(), "{} is empty", asset.name);
        }
    }

    #[tokio::test]
    async fn unknown_asset_is_404() {
        for uri in
            ["/graphiql/nope.js", "/graphiql/graphiql.min.js.map", "/graphiql/..%2FCargo.toml", "/graphiql/"]
        {
            assert_eq!(get_uri(uri).await.status(), StatusCode::NOT_FOUND, "{uri}");
        }
    }
}
