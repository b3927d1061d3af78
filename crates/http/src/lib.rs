//! RFC 9457 problem details, as every HTTP API of the backbone answers them. Each service keeps
//! its own table of stable codes ([`problem_codes!`]) and its own problem body; what is the same
//! everywhere lives here: the media type, the response, and turning what the framework answers by
//! itself (404, 405, an undecodable path) into a problem without the framework's text, which may
//! quote the input.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `Content-Type` of every problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Declares a service's problem codes once: `Variant = ("code", status, "title")`. The code is the
/// last segment of the problem's `type` and is stable. Generates `ProblemCode` with `ALL`,
/// `as_str`, `status`, `title` and `parse`.
#[macro_export]
macro_rules! problem_codes {
    ($($variant:ident = ($code:literal, $status:literal, $title:literal)),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemCode {
            $($variant),*
        }

        impl ProblemCode {
            pub const ALL: &'static [ProblemCode] = &[$(ProblemCode::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProblemCode::$variant => $code),*
                }
            }

            pub fn status(self) -> u16 {
                match self {
                    $(ProblemCode::$variant => $status),*
                }
            }

            pub fn title(self) -> &'static str {
                match self {
                    $(ProblemCode::$variant => $title),*
                }
            }

            pub fn parse(code: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.as_str() == code)
            }
        }
    };
}

/// `body` as a problem document with `status` (an unknown status is a 500).
pub fn problem_response(status: u16, body: impl IntoResponse) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// A response middleware's core (`axum::middleware::map_response`): an error the framework
/// answered by itself becomes the problem `problem(status)` renders, keeping only its `Allow`
/// header. Successes and problem documents pass through unchanged.
pub fn framework_answer(response: Response, problem: impl FnOnce(StatusCode) -> Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut answer = problem(status);
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    problem_codes! {
        BadRequest = ("bad-request", 400, "The request is malformed"),
        Internal = ("internal", 500, "Unexpected error"),
    }

    #[test]
    fn a_code_table_parses_back_and_knows_its_status() {
        assert_eq!(ProblemCode::ALL.len(), 2);
        for code in ProblemCode::ALL {
            assert_eq!(ProblemCode::parse(code.as_str()), Some(*code));
        }
        assert_eq!(ProblemCode::BadRequest.status(), 400);
        assert_eq!(ProblemCode::Internal.title(), "Unexpected error");
        assert_eq!(ProblemCode::parse("nope"), None);
    }

    #[test]
    fn a_problem_is_sent_as_problem_json() {
        let r = problem_response(422, "{}");
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            problem_response(1000, "{}").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_frameworks_answer_becomes_a_problem_and_keeps_allow_only() {
        let mut framework = (
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed: GET /x?secret",
        )
            .into_response();
        framework
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        let seen = std::cell::Cell::new(None);
        let answer = framework_answer(framework, |s| {
            seen.set(Some(s));
            problem_response(s.as_u16(), "{\"code\":\"method-not-allowed\"}")
        });
        assert_eq!(seen.get(), Some(StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(answer.headers()[header::ALLOW], "POST");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        // Successes and problems pass through untouched.
        let ok = framework_answer(StatusCode::OK.into_response(), |_| unreachable!());
        assert_eq!(ok.status(), StatusCode::OK);
        let problem = framework_answer(problem_response(409, "{}"), |_| unreachable!());
        assert_eq!(problem.status(), StatusCode::CONFLICT);
    }
}
